//! The `Provider` port: the three SmartVPS calls the engine needs, each with its outcome
//! classified as succeeded, rejected (a definite no) or unknown (we cannot tell).
//!
//! Implementations: [`smartvps::SmartVpsClient`] over HTTP, and the simulator in-process
//! (`crate::simulator::SimProvider`); [`metered::MeteredProvider`] wraps either with metrics,
//! [`health::Watched`] with the upstream health record and failures in plain words.

pub mod health;
pub mod metered;
pub mod smartvps;

use std::fmt;
use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use crate::domain::{Credentials, OrderId, Os, PackageId, PackageName, RamGb};

/// How a call to SmartVPS ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// It did what was asked.
    Succeeded(T),
    /// A definite no: nothing happened upstream (connection refused, 4xx, the bare `error`).
    Rejected(String),
    /// It may or may not have happened upstream (timeout after sending, reset, 5xx, garbled 2xx).
    Unknown(String),
}

impl<T> Outcome<T> {
    /// Maps the success value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Outcome<U> {
        match self {
            Self::Succeeded(v) => Outcome::Succeeded(f(v)),
            Self::Rejected(r) => Outcome::Rejected(r),
            Self::Unknown(r) => Outcome::Unknown(r),
        }
    }

    /// The outcome's kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Succeeded(_) => "succeeded",
            Self::Rejected(_) => "rejected",
            Self::Unknown(_) => "unknown",
        }
    }
}

/// Who a call is made for: carried to logs (and, as a request id header, to the simulator so it
/// can attribute purchases to orders). SmartVPS itself ignores it.
#[derive(Clone, Debug, Default)]
pub struct CallContext {
    /// The order, when the call is made for one.
    pub order_id: Option<OrderId>,
    /// Attempt number within its phase.
    pub attempt: u32,
}

impl CallContext {
    /// A context for `order`'s attempt `attempt`.
    pub fn for_order(order: &OrderId, attempt: u32) -> Self {
        Self {
            order_id: Some(order.clone()),
            attempt,
        }
    }

    /// The request id the HTTP client sends: `<order id>/<attempt>`, or empty.
    pub fn request_id(&self) -> Option<String> {
        self.order_id
            .as_ref()
            .map(|o| format!("{o}/{}", self.attempt))
    }
}

/// One package in SmartVPS's stock list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StockEntry {
    /// The PID.
    pub id: PackageId,
    /// The package name (address prefix); `Err` text when SmartVPS sent something unparseable.
    pub name: Result<PackageName, String>,
    /// Free addresses right now (moves without us: other resellers share the pool).
    pub free: u32,
    /// Whether it can be bought (`status` = `active`).
    pub active: bool,
}

/// What status(ip) told us about a server.
#[derive(Clone, Default)]
pub struct ServerStatus {
    /// `IP`.
    pub ip: Option<String>,
    /// `OS`.
    pub os: Option<String>,
    /// `Usernane` or `Username`.
    pub username: Option<String>,
    /// `Password`: empty until provisioning has finished.
    pub password: Option<SecretString>,
    /// `ExpiryDate`.
    pub expiry: Option<String>,
    /// `PowerStatus`.
    pub power: Option<String>,
    /// `MachineStatus`.
    pub machine: Option<String>,
    /// `ActionStatus`: `pending` while the OS is installed, `completed` when ready.
    pub action: Option<String>,
    /// `RAM`.
    pub ram: Option<String>,
}

impl ServerStatus {
    /// The credentials, when the server is ready: a non-empty password and no pending action.
    pub fn credentials(&self, ip: Ipv4Addr) -> Option<Credentials> {
        let password = self
            .password
            .as_ref()
            .filter(|p| !p.expose_secret().trim().is_empty())?;
        if self
            .action
            .as_deref()
            .is_some_and(|a| a.eq_ignore_ascii_case("pending"))
        {
            return None;
        }
        let username = self
            .username
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| Credentials::default_username(self.os.as_deref()).to_string());
        Some(Credentials {
            ip,
            username,
            password: password.clone(),
            os: self.os.clone(),
        })
    }

    /// Why the server is not ready yet, in words.
    pub fn not_ready_reason(&self) -> String {
        let action = self.action.as_deref().unwrap_or("unknown");
        format!("credentials not ready yet (ActionStatus: {action}, password empty)")
    }
}

impl fmt::Debug for ServerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerStatus")
            .field("ip", &self.ip)
            .field("os", &self.os)
            .field("username", &self.username)
            .field(
                "password",
                &self.password.as_ref().map(|p| {
                    if p.expose_secret().is_empty() {
                        ""
                    } else {
                        "[redacted]"
                    }
                }),
            )
            .field("expiry", &self.expiry)
            .field("power", &self.power)
            .field("machine", &self.machine)
            .field("action", &self.action)
            .field("ram", &self.ram)
            .finish()
    }
}

/// A call that changes a server upstream. Each answers with a status string: `success|...` when
/// done, `error` when not (an unknown address, or a failure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `start`: power on.
    Start,
    /// `stop`: power off.
    Stop,
    /// `format`: reinstall the same image, with a new password.
    Format,
    /// `changeos`: install another image, with a new password.
    ChangeOs(Os),
    /// `renewvps`: extend `ExpiryDate` by a month.
    Renew,
}

impl Command {
    /// The endpoint, also the operation's name in logs and metrics.
    pub fn endpoint(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Format => "format",
            Self::ChangeOs(_) => "changeos",
            Self::Renew => "renewvps",
        }
    }
}

/// The SmartVPS operations the engine uses. Each call is bounded by `timeout`, measured in the
/// clock's time and applied as the real timeout of that call.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The stock list.
    async fn ipstock(&self, timeout: Duration) -> Outcome<Vec<StockEntry>>;
    /// Buys a server in `package` with `ram`; success carries the assigned address.
    async fn buy(
        &self,
        ctx: &CallContext,
        package: &PackageName,
        ram: RamGb,
        timeout: Duration,
    ) -> Outcome<Ipv4Addr>;
    /// A server's details.
    async fn status(
        &self,
        ctx: &CallContext,
        ip: Ipv4Addr,
        timeout: Duration,
    ) -> Outcome<ServerStatus>;

    /// Sends `command` for the server at `ip`. Succeeded means SmartVPS said `success`; a timeout,
    /// a reset, a 5xx or a reply that is neither success nor error is unknown: the change may
    /// have happened, and only status can tell.
    async fn command(
        &self,
        ctx: &CallContext,
        ip: Ipv4Addr,
        command: Command,
        timeout: Duration,
    ) -> Outcome<()>;

    /// [`Provider::buy`], but a call that reaches `timeout` is not hung up on: its outcome for
    /// the attempt is the timeout's unknown, and the returned [`LateReply`] hears the reply if it
    /// still comes within `listen` of sending (SmartVPS answers on the open connection when a
    /// slow purchase completes). Providers that cannot listen return no late reply.
    async fn buy_listening(
        &self,
        ctx: &CallContext,
        package: &PackageName,
        ram: RamGb,
        timeout: Duration,
        listen: Duration,
    ) -> (Outcome<Ipv4Addr>, Option<LateReply>) {
        let _ = listen;
        (self.buy(ctx, package, ram, timeout).await, None)
    }
}

/// The reply of a buyvps that outlived its attempt's timeout: resolves to the outcome SmartVPS
/// finally sent, or `None` when none came before the listening window closed (or the
/// connection broke). Dropping it hangs up.
pub struct LateReply(Pin<Box<dyn Future<Output = Option<Outcome<Ipv4Addr>>> + Send>>);

impl LateReply {
    /// Wraps the future that waits for the reply.
    pub fn new(f: impl Future<Output = Option<Outcome<Ipv4Addr>>> + Send + 'static) -> Self {
        Self(Box::pin(f))
    }

    /// Waits for the reply.
    pub async fn wait(self) -> Option<Outcome<Ipv4Addr>> {
        self.0.await
    }
}

impl fmt::Debug for LateReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LateReply")
    }
}
