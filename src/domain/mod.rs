//! Domain types: orders and their state machine, packages, credentials, the purchase ledger,
//! the server's actions and renewals (the renewal ledger, the term), the reasons given for
//! actions, and the timeline an admin reads.

pub mod credentials;
pub mod inventory;
pub mod ledger;
pub mod order;
pub mod package;
pub mod reason;
pub mod renewal;
pub mod server;

use serde::Serialize;

pub use credentials::Credentials;
pub use inventory::{CompleteScan, Discovered};
pub use ledger::{Purchase, PurchaseId, PurchaseIntent, PurchaseOutcome, Resolution};
pub use order::{
    Customer, Failure, FieldError, NewOrder, Order, OrderId, OrderRef, OrderRequest, OrderState,
    Phase, RamGb, TransitionError,
};
pub use package::{CatalogPackage, PackageId, PackageName};
pub use reason::{MAX_REASON_CHARS, Reason, ReasonError};
pub use renewal::{Renewal, RenewalState, ServerTerm, expiry_instant};
pub use server::{ActionKind, ActionState, CallOutcome, Os, ServerAction, ServerFacts, Stage};

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
///
/// Customer notices and admin alerts are separate kinds so one state change can queue both
/// (a failed order tells the customer *and* the team) and each is routed on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
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
    /// Admin alert: an order failed (the admin's counterpart of [`NoticeKind::Failed`]).
    AdminFailed,
    /// Admin alert: an order needs a decision (counterpart of [`NoticeKind::NeedsAttention`]).
    AdminNeedsAttention,
    /// Admin alert: a package is running out of stock. Not tied to an order; queued with
    /// `notify::admin_alert`.
    AdminLowStock,
    /// A reinstall or change of OS finished: the new login, as on first delivery.
    CredentialsChanged,
    /// An action on the server (start, stop, reboot, reinstall, change OS) is done.
    ActionCompleted,
    /// An action on the server was given up.
    ActionFailed,
    /// The order was cancelled by an admin: the storefront refunds or closes it, the customer
    /// is told.
    Cancelled,
    /// An admin put a failed or escalated order back to work (retry, resolve): the storefront
    /// learns it is in progress again. Webhooks only: the customer is written to again when
    /// there is news, not for every admin step.
    Resumed,
    /// The server expires soon (`policy.renew.remind_before` ahead) and no renewal is queued.
    ExpiryReminder,
    /// A renewal was applied: the server's expiry moved forward.
    Renewed,
    /// The server reached its expiry unrenewed: the order is expired.
    Expired,
    /// The cancelled service reached its expiry: the order is terminated.
    Terminated,
    /// Admin alert: a paid renewal could not be applied (attempts spent).
    AdminRenewalFailed,
}

/// Who a notice is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// The order's customer.
    Customer,
    /// The operators (`notify.email.admin_to`, webhook `admin.alert` events).
    Admin,
}

impl NoticeKind {
    /// Every kind.
    pub const ALL: [NoticeKind; 17] = [
        Self::Provisioning,
        Self::Ready,
        Self::Failed,
        Self::NeedsAttention,
        Self::AdminFailed,
        Self::AdminNeedsAttention,
        Self::AdminLowStock,
        Self::CredentialsChanged,
        Self::ActionCompleted,
        Self::ActionFailed,
        Self::Cancelled,
        Self::Resumed,
        Self::ExpiryReminder,
        Self::Renewed,
        Self::Expired,
        Self::Terminated,
        Self::AdminRenewalFailed,
    ];

    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Ready => "ready",
            Self::Failed => "failed",
            Self::NeedsAttention => "needs_attention",
            Self::AdminFailed => "admin_failed",
            Self::AdminNeedsAttention => "admin_needs_attention",
            Self::AdminLowStock => "admin_low_stock",
            Self::CredentialsChanged => "credentials_changed",
            Self::ActionCompleted => "action_completed",
            Self::ActionFailed => "action_failed",
            Self::Cancelled => "cancelled",
            Self::Resumed => "resumed",
            Self::ExpiryReminder => "expiry_reminder",
            Self::Renewed => "renewed",
            Self::Expired => "expired",
            Self::Terminated => "terminated",
            Self::AdminRenewalFailed => "admin_renewal_failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The webhook event name: `order.*` for customer notices, `admin.alert` for every alert.
    pub fn event(self) -> &'static str {
        match self {
            Self::Provisioning => "order.provisioning",
            Self::Ready => "order.ready",
            Self::Failed => "order.failed",
            Self::NeedsAttention => "order.needs_attention",
            Self::CredentialsChanged => "order.credentials_changed",
            Self::ActionCompleted => "server.action_completed",
            Self::ActionFailed => "server.action_failed",
            Self::Cancelled => "order.cancelled",
            Self::Resumed => "order.resumed",
            Self::ExpiryReminder => "server.expiring",
            Self::Renewed => "server.renewed",
            Self::Expired => "server.expired",
            Self::Terminated => "server.terminated",
            Self::AdminFailed
            | Self::AdminNeedsAttention
            | Self::AdminLowStock
            | Self::AdminRenewalFailed => "admin.alert",
        }
    }

    /// Who it is for.
    pub fn audience(self) -> Audience {
        match self {
            Self::Provisioning
            | Self::Ready
            | Self::Failed
            | Self::NeedsAttention
            | Self::CredentialsChanged
            | Self::ActionCompleted
            | Self::ActionFailed
            | Self::Cancelled
            | Self::Resumed
            | Self::ExpiryReminder
            | Self::Renewed
            | Self::Expired
            | Self::Terminated => Audience::Customer,
            Self::AdminFailed
            | Self::AdminNeedsAttention
            | Self::AdminLowStock
            | Self::AdminRenewalFailed => Audience::Admin,
        }
    }

    /// What the notice says, in a few words, for the timeline's "queued", "delivered" and
    /// "abandoned" lines (the configured subject may differ).
    pub fn label(self) -> &'static str {
        match self {
            Self::Provisioning => "\"Your server is being provisioned...\"",
            Self::Ready => "\"Your server is ready!\" with credentials",
            Self::Failed => "provisioning failed",
            Self::NeedsAttention => "order delayed, under review",
            Self::Cancelled => "order cancelled",
            Self::Resumed => "order back in progress",
            Self::CredentialsChanged => "new login details after a reinstall",
            Self::ActionCompleted => "server action done",
            Self::ActionFailed => "server action not completed",
            Self::AdminFailed => "order failed",
            Self::AdminNeedsAttention => "order needs a decision",
            Self::AdminLowStock => "low stock",
            Self::ExpiryReminder => "server expires soon",
            Self::Renewed => "server renewed",
            Self::Expired => "server expired",
            Self::Terminated => "service ended",
            Self::AdminRenewalFailed => "renewal failed",
        }
    }

    /// For an admin alert, what it is about (the `alert` field of an `admin.alert` event).
    pub fn alert(self) -> Option<&'static str> {
        match self {
            Self::AdminFailed => Some("order_failed"),
            Self::AdminNeedsAttention => Some("order_needs_attention"),
            Self::AdminLowStock => Some("low_stock"),
            Self::AdminRenewalFailed => Some("renewal_failed"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_kinds_round_trip_and_name_their_events() {
        for kind in NoticeKind::ALL {
            assert_eq!(NoticeKind::parse(kind.as_str()), Some(kind));
            assert_eq!(kind.alert().is_some(), kind.audience() == Audience::Admin);
            assert_eq!(
                kind.event() == "admin.alert",
                kind.audience() == Audience::Admin
            );
        }
        assert_eq!(NoticeKind::parse("nope"), None);
        for kind in NoticeKind::ALL {
            assert!(
                crate::notify::webhook::EVENTS.contains(&kind.event()),
                "a webhook can subscribe to {}",
                kind.event()
            );
        }
        assert_eq!(NoticeKind::Ready.event(), "order.ready");
    }
}
