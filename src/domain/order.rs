//! The order: its identity, the intake request it came from, its state machine.
//!
//! Transitions are pure methods on [`Order`]; storage only persists what they produce.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::package::PackageId;
use crate::clock::Timestamp;

/// Our id for an order (a UUIDv7, so ids sort by creation time).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(String);

impl OrderId {
    /// A fresh id.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// Parses an id taken from a URL or the database.
    ///
    /// # Errors
    /// When `s` is not a UUID.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        uuid::Uuid::parse_str(s)
            .map(|u| Self(u.to_string()))
            .map_err(|_| FieldError::new("id", "not an order id (expected a UUID)"))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for OrderId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request field that failed validation: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Dotted path of the field, e.g. `customer.email`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A new field error.
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// The storefront's id for the payment or order; intake is idempotent on it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderRef(String);

impl OrderRef {
    /// Parses an order reference: 1 to 128 printable characters.
    ///
    /// # Errors
    /// When empty, too long, or containing control characters.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(FieldError::new("order_ref", "must not be empty"));
        }
        if s.chars().count() > 128 {
            return Err(FieldError::new(
                "order_ref",
                "must be at most 128 characters",
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(FieldError::new(
                "order_ref",
                "must not contain control characters",
            ));
        }
        if let Some(c) = s.chars().find(|c| is_format_char(*c)) {
            // Bidi overrides and zero-width characters make two different references look the
            // same on the dashboard and in emails (or reorder what an admin reads).
            return Err(FieldError::new(
                "order_ref",
                format!(
                    "must not contain invisible or text-direction characters (found U+{:04X})",
                    u32::from(c)
                ),
            ));
        }
        Ok(Self(s.to_string()))
    }

    /// The reference as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Characters that text can carry invisibly or that reorder it: every code point of Unicode's
/// general category Cf (format; as of Unicode 16: bidirectional controls, zero-width spaces and
/// joiners, the word joiner and invisible operators, the byte-order mark, the soft hyphen, the
/// Arabic, Syriac, Kaithi, Egyptian, shorthand and musical format controls, and the tag
/// characters), plus the line and paragraph separators (Zl, Zp), which `char::is_control` misses.
fn is_format_char(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x2028..=0x2029
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

/// RAM in whole gigabytes, as buyvps takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RamGb(u32);

impl RamGb {
    /// The largest RAM size intake accepts.
    pub const MAX: u32 = 512;

    /// Parses a RAM size: 1 to [`RamGb::MAX`] GB.
    ///
    /// # Errors
    /// When out of range.
    pub fn parse(gb: i64) -> Result<Self, FieldError> {
        match u32::try_from(gb) {
            Ok(v) if (1..=Self::MAX).contains(&v) => Ok(Self(v)),
            _ => Err(FieldError::new(
                "ram_gb",
                format!("must be a whole number from 1 to {}", Self::MAX),
            )),
        }
    }

    /// Whole gigabytes.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// Operating systems SmartVPS images offer, as `changeos` takes them.
pub const OS_CHOICES: [&str; 7] = ["2012", "2016", "2019", "2022", "11", "centos", "ubuntu"];

/// Who the server is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// Where notices go.
    pub email: String,
    /// How notices address them.
    pub name: String,
}

impl Customer {
    /// Validates a customer.
    ///
    /// # Errors
    /// When the email is not a plausible address or the name is empty or too long.
    pub fn parse(email: &str, name: &str) -> Result<Self, FieldError> {
        let email = email.trim();
        let valid_email = email.len() <= 254
            && !email.chars().any(|c| c.is_whitespace() || c.is_control())
            && email.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains('@')
            });
        if !valid_email {
            return Err(FieldError::new(
                "customer.email",
                "must be an email address like name@example.com",
            ));
        }
        let name = name.trim();
        if name.is_empty() {
            return Err(FieldError::new("customer.name", "must not be empty"));
        }
        if name.chars().count() > 200 || name.chars().any(char::is_control) {
            return Err(FieldError::new(
                "customer.name",
                "must be at most 200 printable characters",
            ));
        }
        Ok(Self {
            email: email.to_string(),
            name: name.to_string(),
        })
    }
}

/// The intake request body, as a storefront posts it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    /// The storefront's payment or order id.
    pub order_ref: String,
    /// The package id (PID) from SmartVPS's stock list.
    pub package: i64,
    /// RAM in whole GB.
    pub ram_gb: i64,
    /// Who the server is for.
    pub customer: CustomerRequest,
    /// Operating system: a `changeos` code or its readable name (`2022` or `Windows Server 2022`).
    #[serde(default)]
    pub os: Option<String>,
}

/// The customer part of [`OrderRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerRequest {
    /// Email address.
    pub email: String,
    /// Display name.
    pub name: String,
}

/// A validated intake request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOrder {
    /// Idempotency key.
    pub order_ref: OrderRef,
    /// What to buy.
    pub package_id: PackageId,
    /// How much RAM.
    pub ram_gb: RamGb,
    /// Who for.
    pub customer: Customer,
    /// Which OS, if the storefront chose one.
    pub os: Option<String>,
    /// The configured storefront that sent it (set by intake after authentication; `None` for
    /// orders made by tools and tests in-process).
    pub storefront: Option<String>,
}

impl NewOrder {
    /// Validates a request.
    ///
    /// # Errors
    /// The first invalid field, named by its dotted path.
    pub fn parse(req: &OrderRequest) -> Result<Self, FieldError> {
        let order_ref = OrderRef::parse(&req.order_ref)?;
        let package_id = u32::try_from(req.package)
            .ok()
            .filter(|p| *p > 0)
            .map(PackageId)
            .ok_or_else(|| FieldError::new("package", "must be a positive package id (PID)"))?;
        let ram_gb = RamGb::parse(req.ram_gb)?;
        let customer = Customer::parse(&req.customer.email, &req.customer.name)?;
        let os = match req.os.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(os) => Some(
                super::Os::parse(os)
                    .map_err(|why| FieldError::new("os", why))?
                    .code()
                    .to_string(),
            ),
        };
        Ok(Self {
            order_ref,
            package_id,
            ram_gb,
            customer,
            os,
            storefront: None,
        })
    }

    /// A stable digest of the request's meaning, so a replayed webhook can be told from a
    /// different order reusing the same reference.
    pub fn fingerprint(&self) -> String {
        format!(
            "pkg={};ram={};email={};name={};os={}",
            self.package_id,
            self.ram_gb.get(),
            self.customer.email.to_ascii_lowercase(),
            self.customer.name,
            self.os.as_deref().unwrap_or("")
        )
    }
}

/// Where an order is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    /// Accepted, not yet worked.
    Queued,
    /// Buy phase: purchase attempts, waits, reconciliation.
    Buying,
    /// A server is owned; polling status until credentials appear.
    AwaitingCredentials,
    /// The server came with another OS than the one ordered: `changeos` installs it, and the
    /// credentials are delivered once the install has finished with a new password.
    InstallingOs,
    /// Credentials saved and delivered.
    Ready,
    /// Attempts exhausted; see `failure.phase` for whether a server is owned.
    Failed,
    /// The engine cannot decide safely; an admin must.
    NeedsAttention,
    /// Stopped by an admin.
    Cancelled,
    /// Its server reached its `ExpiryDate` with no renewal paid: SmartVPS lets it lapse. The
    /// order keeps its history; a new payment is a new order.
    Expired,
    /// Its service was cancelled (not to be renewed) and its server reached its expiry.
    Terminated,
}

impl OrderState {
    /// All states, in lifecycle order.
    pub const ALL: [OrderState; 10] = [
        Self::Queued,
        Self::Buying,
        Self::AwaitingCredentials,
        Self::InstallingOs,
        Self::Ready,
        Self::Failed,
        Self::NeedsAttention,
        Self::Cancelled,
        Self::Expired,
        Self::Terminated,
    ];

    /// The state's stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Buying => "buying",
            Self::AwaitingCredentials => "awaiting_credentials",
            Self::InstallingOs => "installing_os",
            Self::Ready => "ready",
            Self::Failed => "failed",
            Self::NeedsAttention => "needs_attention",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Terminated => "terminated",
        }
    }

    /// Whether the engine still works on orders in this state.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Self::Queued | Self::Buying | Self::AwaitingCredentials | Self::InstallingOs
        )
    }

    /// Whether an admin may cancel an order in this state: the active states, and the two an
    /// admin is left to decide (`failed`, `needs_attention`). Not `ready` or later: an order
    /// whose server is bought has its service cancelled instead.
    pub fn is_cancellable(self) -> bool {
        self.is_active() || matches!(self, Self::Failed | Self::NeedsAttention)
    }

    /// Whether a worker may claim orders in this state when they are due: the active states,
    /// and `ready` while an action on its server is pending.
    pub fn is_workable(self) -> bool {
        self.is_active() || self == Self::Ready
    }
}

impl fmt::Display for OrderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown order state {s:?}"))
    }
}

/// The two phases of provisioning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Buying the server.
    Buy,
    /// Waiting for its credentials.
    Credentials,
}

impl Phase {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Buy => "buy",
            Self::Credentials => "credentials",
        }
    }
}

impl FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "buy" => Ok(Self::Buy),
            "credentials" => Ok(Self::Credentials),
            other => Err(format!("unknown phase {other:?}")),
        }
    }
}

/// Why an order stopped short of ready.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The phase it stopped in. A buy-phase failure means no server is owned.
    pub phase: Phase,
    /// A readable reason.
    pub reason: String,
}

/// An order and everything the engine needs to take its next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    /// Our id.
    pub id: OrderId,
    /// The storefront's reference.
    pub order_ref: OrderRef,
    /// Fingerprint of the intake request, for idempotency.
    pub fingerprint: String,
    /// Package (PID) to buy.
    pub package_id: PackageId,
    /// RAM to buy.
    pub ram_gb: RamGb,
    /// Who for.
    pub customer: Customer,
    /// OS, when chosen.
    pub os: Option<String>,
    /// The storefront that sent it, by its configured name; `None` for orders taken before
    /// storefronts authenticated, or made in-process.
    pub storefront: Option<String>,
    /// Current state.
    pub state: OrderState,
    /// Buy attempts started in the current run of the buy phase.
    pub buy_attempts: u32,
    /// Status attempts started in the current run of the credentials phase.
    pub status_attempts: u32,
    /// The server we own for this order, once bought.
    pub server_ip: Option<Ipv4Addr>,
    /// Why the order is failed or needs attention.
    pub failure: Option<Failure>,
    /// When the engine should next work on it; `None` when it is not waiting on the engine.
    pub run_at: Option<Timestamp>,
    /// When intake accepted it; `Total Time` counts from here.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// When it became ready.
    pub ready_at: Option<Timestamp>,
}

/// A transition that the current state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} an order that is {state}")]
pub struct TransitionError {
    /// What was attempted.
    pub action: &'static str,
    /// The state it was in.
    pub state: OrderState,
}

impl Order {
    /// A freshly accepted order, due now.
    pub fn accept(new: NewOrder, now: Timestamp) -> Self {
        let fingerprint = new.fingerprint();
        Self {
            id: OrderId::new(),
            order_ref: new.order_ref,
            fingerprint,
            package_id: new.package_id,
            ram_gb: new.ram_gb,
            customer: new.customer,
            os: new.os,
            storefront: new.storefront,
            state: OrderState::Queued,
            buy_attempts: 0,
            status_attempts: 0,
            server_ip: None,
            failure: None,
            run_at: Some(now),
            created_at: now,
            updated_at: now,
            ready_at: None,
        }
    }

    fn require(&self, action: &'static str, allowed: &[OrderState]) -> Result<(), TransitionError> {
        self.require_that(action, |s| allowed.contains(&s))
    }

    /// [`Order::require`] for a set of states the state itself names (such as
    /// [`OrderState::is_active`]), so the set is spelled once.
    fn require_that(
        &self,
        action: &'static str,
        allowed: impl Fn(OrderState) -> bool,
    ) -> Result<(), TransitionError> {
        if allowed(self.state) {
            Ok(())
        } else {
            Err(TransitionError {
                action,
                state: self.state,
            })
        }
    }

    /// Queued -> buying: the worker has picked it up.
    ///
    /// # Errors
    /// Unless queued.
    pub fn begin_buying(&mut self, now: Timestamp) -> Result<(), TransitionError> {
        self.require("start buying", &[OrderState::Queued])?;
        self.state = OrderState::Buying;
        self.updated_at = now;
        Ok(())
    }

    /// Counts a new buy attempt and returns its number (1-based).
    ///
    /// # Errors
    /// Unless buying, or when a server is already owned (the credentials phase never buys).
    pub fn start_buy_attempt(&mut self, now: Timestamp) -> Result<u32, TransitionError> {
        self.require("start a buy attempt for", &[OrderState::Buying])?;
        if self.server_ip.is_some() {
            return Err(TransitionError {
                action: "buy again for",
                state: OrderState::AwaitingCredentials,
            });
        }
        self.buy_attempts += 1;
        self.updated_at = now;
        Ok(self.buy_attempts)
    }

    /// Counts a new status attempt and returns its number (1-based).
    ///
    /// # Errors
    /// Unless awaiting credentials.
    pub fn start_status_attempt(&mut self, now: Timestamp) -> Result<u32, TransitionError> {
        self.require("poll status for", &[OrderState::AwaitingCredentials])?;
        self.status_attempts += 1;
        self.updated_at = now;
        Ok(self.status_attempts)
    }

    /// Sets when the engine next works on the order (a persisted wait).
    ///
    /// # Errors
    /// Unless the order is still being worked.
    pub fn wait_until(&mut self, at: Timestamp, now: Timestamp) -> Result<(), TransitionError> {
        if !self.state.is_active() {
            return Err(TransitionError {
                action: "schedule",
                state: self.state,
            });
        }
        self.run_at = Some(at);
        self.updated_at = now;
        Ok(())
    }

    /// Buying -> awaiting credentials: a server at `ip` is ours. Status polling starts now.
    ///
    /// # Errors
    /// Unless buying.
    pub fn bought(&mut self, ip: Ipv4Addr, now: Timestamp) -> Result<(), TransitionError> {
        self.require("record a purchase for", &[OrderState::Buying])?;
        self.state = OrderState::AwaitingCredentials;
        self.server_ip = Some(ip);
        self.status_attempts = 0;
        self.run_at = Some(now);
        self.updated_at = now;
        Ok(())
    }

    /// Awaiting credentials -> ready.
    ///
    /// # Errors
    /// Unless awaiting credentials.
    pub fn ready(&mut self, now: Timestamp) -> Result<(), TransitionError> {
        self.require(
            "deliver",
            &[OrderState::AwaitingCredentials, OrderState::InstallingOs],
        )?;
        self.state = OrderState::Ready;
        self.run_at = None;
        self.failure = None;
        self.ready_at = Some(now);
        self.updated_at = now;
        Ok(())
    }

    /// Awaiting credentials -> installing the ordered OS: the server reported another image.
    ///
    /// # Errors
    /// Unless awaiting credentials.
    pub fn install_os(&mut self, now: Timestamp) -> Result<(), TransitionError> {
        self.require(
            "install the ordered OS on",
            &[OrderState::AwaitingCredentials],
        )?;
        self.state = OrderState::InstallingOs;
        self.run_at = Some(now);
        self.updated_at = now;
        Ok(())
    }

    /// Makes a ready order's server work due at `at` (an action was asked for, or waits
    /// between its calls), or idle again with `None`.
    ///
    /// # Errors
    /// Unless ready or installing its OS.
    pub fn schedule_server_work(
        &mut self,
        at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<(), TransitionError> {
        self.require(
            "schedule server work for",
            &[OrderState::Ready, OrderState::InstallingOs],
        )?;
        if self.state == OrderState::InstallingOs && at.is_none() {
            return Err(TransitionError {
                action: "idle",
                state: self.state,
            });
        }
        self.run_at = at;
        self.updated_at = now;
        Ok(())
    }

    /// Ready -> expired (`cancelled_service` false) or terminated (true): the server reached
    /// its expiry unrenewed. It keeps its address and history; nothing more is scheduled.
    ///
    /// # Errors
    /// Unless ready.
    pub fn lapse(
        &mut self,
        cancelled_service: bool,
        now: Timestamp,
    ) -> Result<(), TransitionError> {
        self.require("let lapse", &[OrderState::Ready])?;
        self.state = if cancelled_service {
            OrderState::Terminated
        } else {
            OrderState::Expired
        };
        self.run_at = None;
        self.updated_at = now;
        Ok(())
    }

    /// Exhaustion: the order is failed in `phase`. A credentials-phase failure keeps the address.
    ///
    /// # Errors
    /// Unless still being worked.
    pub fn fail(
        &mut self,
        phase: Phase,
        reason: impl Into<String>,
        now: Timestamp,
    ) -> Result<(), TransitionError> {
        self.stop_working("fail", OrderState::Failed, phase, reason.into(), now)
    }

    /// The engine cannot decide safely: hand the order to an admin.
    ///
    /// # Errors
    /// Unless still being worked.
    pub fn escalate(
        &mut self,
        phase: Phase,
        reason: impl Into<String>,
        now: Timestamp,
    ) -> Result<(), TransitionError> {
        self.stop_working(
            "escalate",
            OrderState::NeedsAttention,
            phase,
            reason.into(),
            now,
        )
    }

    /// An active order stops being worked, in `to` (failed or needing attention), for `reason`.
    fn stop_working(
        &mut self,
        action: &'static str,
        to: OrderState,
        phase: Phase,
        reason: String,
        now: Timestamp,
    ) -> Result<(), TransitionError> {
        self.require_that(action, OrderState::is_active)?;
        self.state = to;
        self.failure = Some(Failure { phase, reason });
        self.run_at = None;
        self.updated_at = now;
        Ok(())
    }

    /// Admin retry of a failed order: resumes at the phase that failed, with fresh attempts.
    /// A credentials-phase retry polls the owned address again; it never buys.
    ///
    /// # Errors
    /// Unless failed.
    pub fn retry(&mut self, now: Timestamp) -> Result<Phase, TransitionError> {
        self.require("retry", &[OrderState::Failed])?;
        let phase = if self.server_ip.is_some() {
            Phase::Credentials
        } else {
            Phase::Buy
        };
        self.state = match phase {
            Phase::Buy => OrderState::Buying,
            Phase::Credentials => OrderState::AwaitingCredentials,
        };
        self.buy_attempts = 0;
        self.status_attempts = 0;
        self.failure = None;
        self.run_at = Some(now);
        self.updated_at = now;
        Ok(phase)
    }

    /// Admin resolution of `needs_attention`: the server at `ip` is ours (the admin found it in
    /// the SmartVPS panel), so the order goes on to the credentials phase with fresh status
    /// attempts. Nothing is bought.
    ///
    /// # Errors
    /// Unless the order needs attention, or when it already owns a different address (an owned
    /// address is never forgotten or replaced).
    pub fn resolve_adopt(&mut self, ip: Ipv4Addr, now: Timestamp) -> Result<(), TransitionError> {
        self.require("adopt a server for", &[OrderState::NeedsAttention])?;
        if self.server_ip.is_some_and(|owned| owned != ip) {
            return Err(TransitionError {
                action: "adopt a second server for",
                state: self.state,
            });
        }
        self.state = OrderState::AwaitingCredentials;
        self.server_ip = Some(ip);
        self.status_attempts = 0;
        self.failure = None;
        self.run_at = Some(now);
        self.updated_at = now;
        Ok(())
    }

    /// Admin correction of an address an admin adopted (a typo, the wrong server): while status
    /// has never succeeded for it, the order polls `ip` instead, with fresh status attempts.
    /// Nothing is bought. Whether the old address may be dropped (an admin adopted it, no
    /// purchase returned it) is the caller's check: it needs the ledger.
    ///
    /// # Errors
    /// Unless awaiting credentials, or failed in the credentials phase, with an address.
    pub fn change_address(&mut self, ip: Ipv4Addr, now: Timestamp) -> Result<(), TransitionError> {
        self.require(
            "change the address of",
            &[OrderState::AwaitingCredentials, OrderState::Failed],
        )?;
        if self.server_ip.is_none() {
            return Err(TransitionError {
                action: "change the address of a server-less",
                state: self.state,
            });
        }
        self.state = OrderState::AwaitingCredentials;
        self.server_ip = Some(ip);
        self.status_attempts = 0;
        self.failure = None;
        self.run_at = Some(now);
        self.updated_at = now;
        Ok(())
    }

    /// Admin resolution of `needs_attention`: the admin confirmed nothing was bought, so the buy
    /// phase starts again with fresh attempts.
    ///
    /// # Errors
    /// Unless the order needs attention, or when it owns a server (buying again would buy twice).
    pub fn resolve_not_bought(&mut self, now: Timestamp) -> Result<(), TransitionError> {
        self.require("buy again for", &[OrderState::NeedsAttention])?;
        if self.server_ip.is_some() {
            return Err(TransitionError {
                action: "buy again for a server-owning",
                state: self.state,
            });
        }
        self.state = OrderState::Buying;
        self.buy_attempts = 0;
        self.failure = None;
        self.run_at = Some(now);
        self.updated_at = now;
        Ok(())
    }

    /// Admin resolution of `needs_attention`: give up. The failure keeps the phase the order was
    /// escalated in, so a later retry resumes where it should.
    ///
    /// # Errors
    /// Unless the order needs attention.
    pub fn resolve_fail(
        &mut self,
        reason: impl Into<String>,
        now: Timestamp,
    ) -> Result<(), TransitionError> {
        self.require("fail", &[OrderState::NeedsAttention])?;
        let phase = match (&self.failure, self.server_ip) {
            (_, Some(_)) => Phase::Credentials,
            (Some(f), None) => f.phase,
            (None, None) => Phase::Buy,
        };
        self.state = OrderState::Failed;
        self.failure = Some(Failure {
            phase,
            reason: reason.into(),
        });
        self.run_at = None;
        self.updated_at = now;
        Ok(())
    }

    /// Admin cancel.
    ///
    /// # Errors
    /// When ready or already cancelled.
    pub fn cancel(&mut self, now: Timestamp) -> Result<(), TransitionError> {
        self.require_that("cancel", OrderState::is_cancellable)?;
        self.state = OrderState::Cancelled;
        self.run_at = None;
        self.updated_at = now;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_refs_refuse_invisible_and_direction_characters() {
        for bad in [
            "WHMCS-\u{202E}3001",
            "WHMCS-\u{200B}1003",
            "\u{FEFF}WHMCS-1",
            "a\u{2066}b",
            "x\u{00AD}y",
            "\u{0600}1",
            "a\u{2028}b",
            "n\u{110BD}",
            "m\u{1D173}",
            "t\u{E0041}",
        ] {
            let e = OrderRef::parse(bad).unwrap_err();
            assert_eq!(e.field, "order_ref");
            assert!(e.message.contains("invisible"), "{bad:?}: {}", e.message);
        }
        for good in ["WHMCS-1003", "заказ-7", "注文-8", "pay_123.4", "طلب-9"] {
            assert!(OrderRef::parse(good).is_ok(), "{good:?}");
        }
    }
    use proptest::prelude::*;

    fn request() -> OrderRequest {
        OrderRequest {
            order_ref: "pay_1".into(),
            package: 5,
            ram_gb: 4,
            customer: CustomerRequest {
                email: "a@example.com".into(),
                name: "Ann".into(),
            },
            os: Some("Ubuntu".into()),
        }
    }

    fn order() -> Order {
        Order::accept(NewOrder::parse(&request()).unwrap(), Timestamp(0))
    }

    #[test]
    fn validation_names_the_field() {
        let mut r = request();
        r.customer.email = "nope".into();
        assert_eq!(NewOrder::parse(&r).unwrap_err().field, "customer.email");
        let mut r = request();
        r.ram_gb = 0;
        assert_eq!(NewOrder::parse(&r).unwrap_err().field, "ram_gb");
        let mut r = request();
        r.package = -3;
        assert_eq!(NewOrder::parse(&r).unwrap_err().field, "package");
        let mut r = request();
        r.os = Some("haiku".into());
        assert_eq!(NewOrder::parse(&r).unwrap_err().field, "os");
        let mut r = request();
        r.order_ref = "  ".into();
        assert_eq!(NewOrder::parse(&r).unwrap_err().field, "order_ref");
    }

    #[test]
    fn happy_path_transitions() {
        let mut o = order();
        o.begin_buying(Timestamp(1)).unwrap();
        assert_eq!(o.start_buy_attempt(Timestamp(1)).unwrap(), 1);
        o.bought("103.82.72.5".parse().unwrap(), Timestamp(2))
            .unwrap();
        assert_eq!(o.state, OrderState::AwaitingCredentials);
        assert_eq!(o.run_at, Some(Timestamp(2)));
        assert!(
            o.start_buy_attempt(Timestamp(2)).is_err(),
            "the credentials phase never buys"
        );
        o.ready(Timestamp(3)).unwrap();
        assert_eq!(o.state, OrderState::Ready);
        assert!(o.cancel(Timestamp(4)).is_err());
    }

    #[test]
    fn retry_resumes_the_failed_phase() {
        let mut o = order();
        o.begin_buying(Timestamp(1)).unwrap();
        o.start_buy_attempt(Timestamp(1)).unwrap();
        o.bought("103.82.72.5".parse().unwrap(), Timestamp(2))
            .unwrap();
        o.fail(Phase::Credentials, "no credentials", Timestamp(3))
            .unwrap();
        assert_eq!(o.retry(Timestamp(4)).unwrap(), Phase::Credentials);
        assert_eq!(o.state, OrderState::AwaitingCredentials);
        assert_eq!(o.server_ip, Some("103.82.72.5".parse().unwrap()));

        let mut o = order();
        o.begin_buying(Timestamp(1)).unwrap();
        o.fail(Phase::Buy, "exhausted", Timestamp(3)).unwrap();
        assert_eq!(o.retry(Timestamp(4)).unwrap(), Phase::Buy);
        assert_eq!((o.state, o.buy_attempts), (OrderState::Buying, 0));
    }

    fn escalated() -> Order {
        let mut o = order();
        o.begin_buying(Timestamp(1)).unwrap();
        o.start_buy_attempt(Timestamp(1)).unwrap();
        o.escalate(Phase::Buy, "stock fell", Timestamp(2)).unwrap();
        o
    }

    #[test]
    fn resolve_adopt_moves_to_credentials_without_buying() {
        let mut o = escalated();
        let ip: Ipv4Addr = "103.82.72.9".parse().unwrap();
        o.resolve_adopt(ip, Timestamp(5)).unwrap();
        assert_eq!(o.state, OrderState::AwaitingCredentials);
        assert_eq!((o.server_ip, o.status_attempts), (Some(ip), 0));
        assert_eq!((o.run_at, o.failure.clone()), (Some(Timestamp(5)), None));
        assert!(o.start_buy_attempt(Timestamp(6)).is_err());
        // Only from needs_attention.
        assert!(order().resolve_adopt(ip, Timestamp(5)).is_err());
    }

    #[test]
    fn resolve_adopt_never_replaces_an_owned_address() {
        let mut o = order();
        o.begin_buying(Timestamp(1)).unwrap();
        o.bought("103.82.72.5".parse().unwrap(), Timestamp(2))
            .unwrap();
        o.escalate(Phase::Credentials, "odd", Timestamp(3)).unwrap();
        let err = o
            .resolve_adopt("103.82.72.6".parse().unwrap(), Timestamp(4))
            .unwrap_err();
        assert_eq!(err.state, OrderState::NeedsAttention);
        assert_eq!(o.server_ip, Some("103.82.72.5".parse().unwrap()));
        o.resolve_adopt("103.82.72.5".parse().unwrap(), Timestamp(4))
            .unwrap();
        assert_eq!(o.state, OrderState::AwaitingCredentials);
    }

    #[test]
    fn resolve_not_bought_restarts_the_buy_phase_unless_a_server_is_owned() {
        let mut o = escalated();
        o.resolve_not_bought(Timestamp(5)).unwrap();
        assert_eq!((o.state, o.buy_attempts), (OrderState::Buying, 0));
        assert_eq!(o.run_at, Some(Timestamp(5)));
        assert!(o.failure.is_none());
        assert!(o.resolve_not_bought(Timestamp(6)).is_err(), "only once");

        let mut owned = order();
        owned.begin_buying(Timestamp(1)).unwrap();
        owned
            .bought("103.82.72.5".parse().unwrap(), Timestamp(2))
            .unwrap();
        owned
            .escalate(Phase::Credentials, "odd", Timestamp(3))
            .unwrap();
        assert!(owned.resolve_not_bought(Timestamp(4)).is_err());
        assert_eq!(owned.state, OrderState::NeedsAttention);
    }

    #[test]
    fn resolve_fail_keeps_the_phase() {
        let mut o = escalated();
        o.resolve_fail("given up by alice", Timestamp(5)).unwrap();
        assert_eq!(o.state, OrderState::Failed);
        let f = o.failure.clone().unwrap();
        assert_eq!(
            (f.phase, f.reason.as_str()),
            (Phase::Buy, "given up by alice")
        );
        assert!(o.run_at.is_none());
        assert!(o.resolve_fail("again", Timestamp(6)).is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Begin,
        BuyAttempt,
        Bought,
        Status,
        Ready,
        Fail,
        Escalate,
        Retry,
        Cancel,
        Adopt,
        NotBought,
        ResolveFail,
        ChangeAddress,
        InstallOs,
        Lapse(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Begin),
            Just(Op::BuyAttempt),
            Just(Op::Bought),
            Just(Op::Status),
            Just(Op::Ready),
            Just(Op::Fail),
            Just(Op::Escalate),
            Just(Op::Retry),
            Just(Op::Cancel),
            Just(Op::Adopt),
            Just(Op::NotBought),
            Just(Op::ResolveFail),
            Just(Op::ChangeAddress),
            Just(Op::InstallOs),
            any::<bool>().prop_map(Op::Lapse),
        ]
    }

    proptest! {
        /// Whatever sequence of transitions is attempted: a ready order has an address, a buy
        /// attempt never starts once an address is owned, terminal states have no wake-up time,
        /// and once an address is owned it is never forgotten: only an admin's change of address
        /// replaces it, and never on a ready order.
        #[test]
        fn invariants_hold_for_any_sequence(ops in proptest::collection::vec(op(), 0..40)) {
            let mut o = order();
            let mut t = 0;
            let mut owned = None;
            for op in ops {
                t += 1;
                let now = Timestamp(t);
                let before_ip = o.server_ip;
                let _ = match op {
                    Op::Begin => o.begin_buying(now).map(|_| ()),
                    Op::BuyAttempt => o.start_buy_attempt(now).map(|_| ()),
                    Op::Bought => o.bought("10.0.0.1".parse().unwrap(), now),
                    Op::Status => o.start_status_attempt(now).map(|_| ()),
                    Op::Ready => o.ready(now),
                    Op::Fail => { let phase = if o.server_ip.is_some() { Phase::Credentials } else { Phase::Buy }; o.fail(phase, "x", now) }
                    Op::Escalate => o.escalate(Phase::Buy, "x", now),
                    Op::Retry => o.retry(now).map(|_| ()),
                    Op::Cancel => o.cancel(now),
                    Op::Adopt => o.resolve_adopt("10.0.0.1".parse().unwrap(), now),
                    Op::NotBought => o.resolve_not_bought(now),
                    Op::ResolveFail => o.resolve_fail("x", now),
                    Op::ChangeAddress => {
                        let was_ready = o.state == OrderState::Ready;
                        let changed = o.change_address("10.0.0.2".parse().unwrap(), now);
                        if was_ready { prop_assert!(changed.is_err()); }
                        if changed.is_ok() { owned = o.server_ip; }
                        changed
                    }
                    Op::InstallOs => o.install_os(now),
                    Op::Lapse(cancelled) => o.lapse(cancelled, now),
                };
                if matches!(o.state, OrderState::Expired | OrderState::Terminated) {
                    prop_assert!(o.server_ip.is_some(), "only a server that was ready lapses");
                }
                let changed_address = matches!(op, Op::ChangeAddress);
                if before_ip.is_some() && !changed_address { prop_assert_eq!(o.server_ip, before_ip); }
                if before_ip.is_some() { prop_assert!(o.server_ip.is_some()); }
                if o.server_ip.is_some() { owned = o.server_ip; }
                prop_assert_eq!(o.server_ip, owned);
                if o.state == OrderState::Ready { prop_assert!(o.server_ip.is_some()); }
                if !o.state.is_active() { prop_assert!(o.run_at.is_none()); }
                if o.state == OrderState::Buying { prop_assert!(o.server_ip.is_none()); }
            }
        }
    }
}
