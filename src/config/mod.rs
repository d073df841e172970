//! Typed settings: an optional TOML file, then `PROVISIONER_*`/`SMARTVPS_*` environment variables,
//! then validation. Defaults are the seed's, so running with no file at all gives the seed's retry
//! timing, a local SQLite database and the built-in SmartVPS simulator.
//!
//! The file is read into "raw" structs whose durations are plain strings, and converted afterwards.
//! Converting by hand rather than inside serde lets every error name its key exactly
//! (`policy.buy.timeout`, or `SMARTVPS_PASSWORD` when the bad value came from the environment).
//! See [`example_toml`] for every key with its default.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::crypto::{MIN_SECRET_BITS, secret_bits};
use crate::notify::email::{EmailSettings, SmtpTls};
use crate::notify::templates::{Template, Templates};
use crate::notify::webhook::{EVENTS, WebhookEndpoint};
use crate::policy::{OnUnknown, PhasePolicy, RetryPolicy};

mod error;
mod file;
mod resolve;
#[cfg(test)]
mod tests;

pub use error::ConfigError;
use error::*;
use file::*;
use resolve::*;

/// The file read when no `--config` is given, relative to the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "provisioner.toml";
/// Default `database.url`: an embedded SQLite file next to the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://provisioner.db";
/// Default `server.listen`: loopback only, so a fresh install is not exposed by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default `smartvps.path_prefix`: the production reseller API's (the vendor sheet's `api/ocean/`
/// is wrong for production, hence a setting).
pub const DEFAULT_PATH_PREFIX: &str = "api/oceansmart/";
/// Default `worker.shutdown_grace`: how long a stopping process lets in-flight calls finish.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Every environment variable read, in the order they are documented.
pub const ENV_VARS: &[&str] = &[
    ENV_SMARTVPS_USERNAME,
    ENV_SMARTVPS_PASSWORD,
    ENV_SMARTVPS_BASE_URL,
    ENV_SMARTVPS_PATH_PREFIX,
    ENV_DATABASE_URL,
    ENV_LISTEN,
    ENV_ON_UNKNOWN,
    ENV_WORKER_CONCURRENCY,
    ENV_SECRET_KEY,
    ENV_SMTP_USERNAME,
    ENV_SMTP_PASSWORD,
    ENV_ADMIN_TOKENS,
    ENV_STOREFRONTS,
];
const ENV_SMARTVPS_USERNAME: &str = "SMARTVPS_USERNAME";
const ENV_SMARTVPS_PASSWORD: &str = "SMARTVPS_PASSWORD";
const ENV_SMARTVPS_BASE_URL: &str = "SMARTVPS_BASE_URL";
const ENV_SMARTVPS_PATH_PREFIX: &str = "SMARTVPS_PATH_PREFIX";
const ENV_DATABASE_URL: &str = "PROVISIONER_DATABASE_URL";
const ENV_LISTEN: &str = "PROVISIONER_LISTEN";
const ENV_ON_UNKNOWN: &str = "PROVISIONER_ON_UNKNOWN";
const ENV_WORKER_CONCURRENCY: &str = "PROVISIONER_WORKER_CONCURRENCY";
const ENV_SECRET_KEY: &str = "PROVISIONER_SECRET_KEY";
const ENV_SMTP_USERNAME: &str = "PROVISIONER_SMTP_USERNAME";
const ENV_SMTP_PASSWORD: &str = "PROVISIONER_SMTP_PASSWORD";
/// Default `notify.max_attempts`: with the default backoff, about 4 hours of retries.
pub const DEFAULT_NOTIFY_MAX_ATTEMPTS: u32 = 12;
/// Default `notify.backoff_base`.
pub const DEFAULT_NOTIFY_BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Default `notify.backoff_cap`.
pub const DEFAULT_NOTIFY_BACKOFF_CAP: Duration = Duration::from_secs(3600);
/// Default `notify.timeout`.
pub const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest webhook secret accepted: a short HMAC key can be guessed offline from one request.
const MIN_WEBHOOK_SECRET: usize = 16;
const ENV_ADMIN_TOKENS: &str = "PROVISIONER_ADMIN_TOKENS";
const ENV_STOREFRONTS: &str = "PROVISIONER_STOREFRONTS";
/// Default `server.max_connections`: inbound connections served at once. Further ones wait in
/// the kernel's accept queue, holding no file descriptor of ours.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Default `server.max_connections_per_client`: an eighth of the slots, so a flood from a few
/// addresses leaves room for the storefront and the admins.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 64;
/// Default `server.header_timeout`: the longest a client may take to send a request's headers.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `server.body_timeout`: the longest a client may take to send a request's body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `server.idle_timeout`: how long a keep-alive connection may sit with nothing to do;
/// the shorter `header_timeout` also bounds it, as the wait for the next request's head.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `server.max_body_bytes`: every request this API takes is a small JSON or form body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Default `server.auth_failure_burst`: failed authentications one client address may make
/// before it is throttled.
pub const DEFAULT_AUTH_FAILURE_BURST: u32 = 10;
/// Default `server.auth_failures_per_minute`: once throttled, how many further tries a client
/// address earns back per minute.
pub const DEFAULT_AUTH_FAILURES_PER_MINUTE: u32 = 6;
/// Default `catalog.sync_interval`: how often SmartVPS's stock list is read into the catalog.
pub const DEFAULT_CATALOG_SYNC_INTERVAL: Duration = Duration::from_secs(600);
/// Default `catalog.low_stock`: a package with this many free addresses or fewer is flagged.
pub const DEFAULT_LOW_STOCK: u32 = 5;
/// The shortest admin token accepted: shorter ones are guessable.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Everything the service needs to start, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Attempts, timeouts and waits of both phases, and what to do with unknown purchases.
    pub policy: RetryPolicy,
    /// The real SmartVPS API; `None` means the built-in simulator is used, so the service runs
    /// with no credentials at all.
    pub smartvps: Option<SmartVpsSettings>,
    /// Where orders, the purchase ledger and the outbox live.
    pub database: DatabaseSettings,
    /// The HTTP API's socket.
    pub server: ServerSettings,
    /// The worker loop's knobs.
    pub worker: WorkerSettings,
    /// Where customer notices and admin alerts go, and how deliveries are retried.
    pub notify: NotifySettings,
    /// The package catalog: sync interval and the low-stock threshold.
    pub catalog: CatalogSettings,
    /// Who may use the admin API and dashboard.
    pub admin: AdminSettings,
    /// The storefronts that may post orders, each with its own secret; none means intake
    /// refuses every order.
    pub storefronts: Vec<Storefront>,
    /// Key that encrypts customer passwords at rest. Read from `PROVISIONER_SECRET_KEY` only, so it
    /// never sits in a config file that gets copied around; redacted in `Debug`.
    pub secret_key: Option<SecretString>,
    /// The file that was read, if any, so the start-up log can say where settings came from.
    pub source: Option<PathBuf>,
}

/// The SmartVPS reseller API account.
#[derive(Clone, Debug)]
pub struct SmartVpsSettings {
    /// Scheme and host, always ending in `/` so joining `path_prefix` onto it cannot glue the host
    /// to the path (`https://smartvps.online/`).
    pub base_url: String,
    /// Path under `base_url` where the API's calls live (production: `api/oceansmart/`).
    pub path_prefix: String,
    /// Reseller account name for HTTP Basic auth.
    pub username: String,
    /// Reseller account password; redacted in `Debug`.
    pub password: SecretString,
}

/// Storage settings.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseSettings {
    /// Connection URL: `sqlite://file.db` for one process, or `postgres://user:password@host/db`
    /// for several processes (on several machines) sharing one PostgreSQL. `Debug` redacts its
    /// password.
    pub url: String,
    /// The key the URL came from (`database.url` or `PROVISIONER_DATABASE_URL`), so a database
    /// that cannot be opened at start-up is reported under it.
    pub key: String,
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field(
                "url",
                &crate::redact::url(&self.url, crate::redact::User::Shown),
            )
            .finish()
    }
}

/// HTTP server settings: where it listens and what it allows a client, so that an inbound
/// flood (idle sockets, slow headers, slow bodies, guessing) never starves the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    /// Address and port the HTTP API binds.
    pub listen: SocketAddr,
    /// Connections served at once; the rest wait in the kernel's accept queue. Also lowered at
    /// start-up to leave file descriptors for the engine's own SmartVPS and database calls.
    pub max_connections: usize,
    /// Connections one client address may hold at once, so one address cannot take every slot.
    pub max_connections_per_client: usize,
    /// Limit on receiving a request's headers, counted from when the connection is ready for it.
    pub header_timeout: Duration,
    /// Limit on receiving a request's body once its headers are in.
    pub body_timeout: Duration,
    /// A connection with no request in progress and no bytes moving for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request body accepted (413 beyond it).
    pub max_body_bytes: usize,
    /// Failed authentications a client address may make before it gets 429.
    pub auth_failure_burst: u32,
    /// Tries a throttled address earns back per minute.
    pub auth_failures_per_minute: u32,
    /// Addresses of reverse proxies (TLS terminators) in front of the API: for a connection
    /// from one of them, the client is the last `X-Forwarded-For` entry that is not itself a
    /// trusted proxy, and the per-client connection cap does not apply to the proxy. Empty (the
    /// default): the TCP peer is the client and `X-Forwarded-For` is ignored, so it cannot be
    /// forged to escape the throttle.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// A storefront allowed to post orders: its name (recorded on each order it sends) and its
/// secret (the HMAC key of its signatures, or its bearer token). `Debug` hides the secret.
#[derive(Clone)]
pub struct Storefront {
    /// Who sent an order, on the order and in the logs.
    pub name: String,
    /// The signing secret.
    pub secret: SecretString,
}

impl fmt::Debug for Storefront {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storefront")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Worker loop settings, as configured: the engine's own settings, whose defaults the engine
/// owns ([`crate::engine::WorkerSettings::for_policy`]) and the file only overrides, and how
/// long the whole process waits on shutdown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerSettings {
    /// Concurrency, lease, poll interval and purchase grace, as the engine takes them.
    pub engine: crate::engine::WorkerSettings,
    /// How long shutdown waits for in-flight steps before abandoning them to lease expiry.
    pub shutdown_grace: Duration,
}

/// Notification channels and delivery retries.
#[derive(Clone, Debug)]
pub struct NotifySettings {
    /// Webhook endpoints; each gets every event it subscribes to.
    pub webhooks: Vec<WebhookEndpoint>,
    /// SMTP, when email is configured.
    pub email: Option<EmailSettings>,
    /// Attempts per delivery before it is abandoned.
    pub max_attempts: u32,
    /// First retry ceiling (doubling, full jitter).
    pub backoff_base: Duration,
    /// Largest retry ceiling.
    pub backoff_cap: Duration,
    /// Bound on one webhook request or SMTP exchange.
    pub timeout: Duration,
    /// What customer notices say (`[notify.templates]`) and the public URL admin alerts link
    /// to (`notify.public_url`).
    pub templates: Templates,
}

/// Package catalog settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogSettings {
    /// How often SmartVPS's stock list is read into the catalog.
    pub sync_interval: Duration,
    /// A sold package with this many free addresses or fewer is flagged as low on stock.
    pub low_stock: u32,
}

/// Admin access settings.
#[derive(Clone, Debug, Default)]
pub struct AdminSettings {
    /// The accepted tokens; none means the admin API and dashboard refuse every request.
    pub tokens: Vec<AdminToken>,
}

/// One admin's bearer token.
#[derive(Clone, Debug)]
pub struct AdminToken {
    /// Who the token belongs to: stored in the timeline of every action taken with it.
    pub name: String,
    /// The secret; redacted in `Debug`, never logged.
    pub token: SecretString,
}

impl Default for Settings {
    /// The settings with no file and no environment: the seed's policy and the simulator.
    fn default() -> Self {
        Self::from_sources(None, &|_| None).expect("the built-in defaults are valid")
    }
}

impl Settings {
    /// Reads `explicit` (`--config PATH`) if given, else `./provisioner.toml` if it exists, else
    /// uses the defaults; then applies the process environment.
    ///
    /// # Errors
    /// The file cannot be read, is not valid TOML, has an unknown key or a bad value; an
    /// environment variable is bad or not UTF-8; or the result is inconsistent.
    pub fn load(explicit: Option<&Path>) -> Result<Settings, ConfigError> {
        let path = match explicit {
            Some(path) => Some(path.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|path| path.is_file()),
        };
        let text = match &path {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    path.display().to_string(),
                    format!("cannot read the config file: {e}"),
                )
            })?),
            None => None,
        };
        // A non-UTF-8 value is refused rather than read lossily: a mangled password would only
        // surface later as an authentication failure far from its cause.
        for name in ENV_VARS {
            if let Err(std::env::VarError::NotUnicode(_)) = std::env::var(name) {
                return Err(ConfigError::new(*name, "is not valid UTF-8"));
            }
        }
        let mut settings = Self::from_sources(text.as_deref(), &|name| std::env::var(name).ok())?;
        settings.source = path;
        Ok(settings)
    }

    /// Builds settings from a TOML text (if any) and an environment lookup, without touching the
    /// process: the pure core of [`Settings::load`]. An environment variable set to the empty string
    /// counts as unset, as container tooling often sets unused variables that way.
    ///
    /// # Errors
    /// As for [`Settings::load`], minus the I/O.
    pub fn from_sources(
        toml_text: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let raw = match toml_text {
            Some(text) => parse_file(text)?,
            None => RawFile::default(),
        };
        let env = Env(env);
        let policy = resolve_policy(raw.policy.unwrap_or_default(), &env)?;
        let smartvps = resolve_smartvps(raw.smartvps.unwrap_or_default(), &env)?;
        let database = resolve_database(raw.database.unwrap_or_default(), &env)?;
        let server = resolve_server(raw.server.unwrap_or_default(), &env)?;
        let worker = resolve_worker(raw.worker.unwrap_or_default(), &policy, &env)?;
        let notify = resolve_notify(raw.notify.unwrap_or_default(), &env)?;
        let catalog = resolve_catalog(raw.catalog.unwrap_or_default())?;
        let admin = resolve_admin(raw.admin.unwrap_or_default(), &env)?;
        let storefronts = resolve_storefronts(raw.storefronts, &env, &admin)?;
        let secret_key = env.get(ENV_SECRET_KEY).map(SecretString::from);
        Ok(Settings {
            policy,
            smartvps,
            database,
            server,
            worker,
            notify,
            catalog,
            admin,
            storefronts,
            secret_key,
            source: None,
        })
    }
}

/// The directory a `sqlite:` database URL's file lives in (`.` for a bare file name); `None` for
/// other URLs. Start-up checks it exists, so a typo is reported under its key rather than as a
/// failure to open.
pub fn sqlite_directory(url: &str) -> Option<PathBuf> {
    if !url.starts_with("sqlite:") {
        return None;
    }
    let file = sqlite_file(url).ok()?;
    Some(match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    })
}

/// A fully commented example config with every key at its default. It parses to exactly the
/// defaults (a test checks it), so it can be copied as a starting point.
pub fn example_toml() -> &'static str {
    EXAMPLE_TOML
}

const EXAMPLE_TOML: &str = r#"# provisioner.toml: every setting, at its default.
# Durations are strings such as "90s", "2m" or "1m 30s".
# Environment variables, where named, override the file.

[policy]
# What the engine does when a buyVps call ends without a definite answer (a timeout, a reset,
# a 5xx, an unreadable reply), because SmartVPS may have bought the server anyway:
#   "reconcile"  wait the strategic delay, then check the evidence before buying again (default);
#   "retry"      buy again after the delay without looking: the seed taken literally, can buy twice;
#   "escalate"   hand the order to an admin at once.
# Env: PROVISIONER_ON_UNKNOWN
on_unknown = "reconcile"

# The buy phase: buyVps calls.
[policy.buy]
# Calls before the order is marked failed (1 to 100).
attempts = 3
# Each call's HTTP timeout: SmartVPS can take minutes to create a server.
timeout = "2m"
# Waits between attempts, exactly attempts - 1 of them: the first follows attempt 1.
# Long on purpose: SmartVPS gets time to finish a purchase before it is retried.
delays = ["2m", "3m"]
# The longest SmartVPS may take to complete a purchase after it was sent (at least timeout). A
# purchase whose outcome is unknown (a timeout, a reset, a 5xx) is never judged "not bought"
# before this has passed since it was sent, whatever the waits above; a timed-out call keeps its
# connection open this long for a late reply. Definite failures keep the waits above.
horizon = "10m"

# The credentials phase: status calls until the server's credentials are available.
[policy.status]
attempts = 3
timeout = "90s"
delays = ["1m", "2m"]

# Work on a bought server: each start, stop, format (reinstall) or changeos call, for actions
# customers and admins ask for and for installing the ordered OS when the server came with
# another. A call whose outcome is unknown is settled by reading status, never sent again
# blindly: it counts as not done only when status still shows no change `horizon` after it was
# sent (at least timeout). per_hour: actions a server may be asked for per hour (429 beyond).
[policy.action]
attempts = 3
timeout = "1m"
delays = ["30s", "1m"]
horizon = "5m"
per_hour = 10

# Waiting for an OS install (changeos, format) to finish with a new password: status is read
# every `poll`; with no new password after `limit` the action fails (the order's credentials
# phase fails when it was provisioning's install, and an admin can retry).
[policy.install]
poll = "1m"
limit = "45m"

# Renewals (paid by a storefront, or by an admin with a reason): each renewvps call. A call whose
# outcome is unknown is settled by reading ExpiryDate, never sent again blindly: it counts as not
# renewed only when the expiry has not moved `horizon` after it was sent. Customers are reminded
# `remind_before` their server's expiry; every server's status is read again every `sweep`.
[policy.renew]
attempts = 3
timeout = "1m"
delays = ["5m", "15m"]
horizon = "30m"
remind_before = "3d"
sweep = "1d"

# The SmartVPS reseller API. Without this section (and without SMARTVPS_BASE_URL) the built-in
# simulator is used and no real server is bought. With it, username and password are required.
# [smartvps]
# base_url = "https://smartvps.online/"  # env SMARTVPS_BASE_URL
# path_prefix = "api/oceansmart/"        # env SMARTVPS_PATH_PREFIX
# username = "reseller"                  # env SMARTVPS_USERNAME
# password = "change-me"                 # env SMARTVPS_PASSWORD (prefer the variable)

[database]
# "sqlite://FILE" for one process, or "postgres://USER:PASSWORD@HOST:5432/DB" for several
# `provisioner serve` processes (one per machine) sharing one PostgreSQL; see docs/deployment.md.
# Env: PROVISIONER_DATABASE_URL (prefer it for a URL with a password)
url = "sqlite://provisioner.db"

[server]
# IP:PORT for the HTTP API; host names are not resolved. Env: PROVISIONER_LISTEN
listen = "127.0.0.1:8080"
# Connections served at once; more wait in the kernel's queue. Lowered at start-up if the
# process's file-descriptor limit would not leave room for the engine's own calls.
max_connections = 512
# Connections one client address may hold at once; more are closed as soon as they arrive.
max_connections_per_client = 64
# A client must send a request's headers within this (also closes sockets idle before a request)...
header_timeout = "10s"
# ...and its body within this.
body_timeout = "10s"
# A keep-alive connection with nothing in progress is closed after the shorter of this and
# header_timeout (the wait for its next request's headers runs under header_timeout too).
idle_timeout = "30s"
# Largest request body, in bytes.
max_body_bytes = 65536
# Failed authentications (admin token, dashboard login, customer token, storefront signature)
# one client address may make before it gets 429 with Retry-After; then this many per minute.
auth_failure_burst = 10
auth_failures_per_minute = 6
# Reverse proxies (TLS terminators) in front of the API, by IP address: behind them the client is
# read from X-Forwarded-For, so throttling and the per-client cap apply to the real client and not
# to the proxy. Empty: X-Forwarded-For is ignored.
trusted_proxies = []

[worker]
# Orders driven at once by this process. Env: PROVISIONER_WORKER_CONCURRENCY
concurrency = 32
# How long a worker owns an order it picked up. Default: 2 x max(buy.timeout, status.timeout,
# action.timeout) + 30s, "4m 30s" with the timeouts above. If set, it must be longer than
# 2 x buy.timeout, status.timeout and action.timeout: a shorter lease lets another worker take
# over an order mid-call and send the call again.
# lease = "4m 30s"
# How often an idle worker looks for due orders.
poll_interval = "1s"
# How long shutdown lets in-flight calls finish.
shutdown_grace = "30s"
# How much longer shutdown waits while a buyVps call is in flight, so a purchase that would have
# answered is not cut off into an unknown outcome. Default: policy.buy.timeout ("2m" above).
# purchase_grace = "2m"

# Notices to customers and admins. Without webhooks or email they are written to the log.
[notify]
# Attempts per delivery (one notice to one channel) before it is abandoned; the count is stored,
# so restarts do not reset it.
max_attempts = 12
# Retry n waits a random time between 0 and min(backoff_cap, backoff_base x 2^n) ("full jitter").
backoff_base = "5s"
backoff_cap = "1h"
# Bound on one webhook request or one SMTP exchange.
timeout = "10s"
# Where people reach this service (e.g. "https://provisioner.example.com"): admin alerts link
# to the order's dashboard page. Unset: no link.
# public_url = "https://provisioner.example.com"

# Webhooks: one [[notify.webhooks]] table per endpoint. Every event is POSTed as JSON and signed
# with HMAC-SHA256 (see "Verifying webhooks" in the README).
# Events: order.provisioning, order.ready, order.failed, order.needs_attention, order.cancelled,
# order.resumed, and admin.alert, which an endpoint gets only when its events list names it
# (alerts carry customer details and internal reasons a storefront need not see).
# [[notify.webhooks]]
# name = "storefront"                  # stable: part of each delivery's idempotency key
# url = "https://shop.example.com/hooks/provisioner"  # https, or http to this machine only
# secret_env = "STOREFRONT_WEBHOOK_SECRET"  # variable holding the signing secret (or secret = "...")
# trusted = false                      # true: order.ready and order.credentials_changed carry the login
# events = ["order.ready", "order.failed", "order.cancelled", "admin.alert"]  # default: all but admin.alert

# Email over SMTP: the customer's notices to the order's address, admin alerts to admin_to.
# [notify.email]
# host = "smtp.example.com"
# port = 587                           # default: 587 for starttls, 465 for tls, 25 for none
# tls = "starttls"                     # "starttls", "tls", or "none" (a relay on this machine only)
# username = "mailer"                  # env PROVISIONER_SMTP_USERNAME
# password = "change-me"               # env PROVISIONER_SMTP_PASSWORD (prefer the variable)
# from = "Provisioner <noreply@example.com>"
# admin_to = ["ops@example.com"]

# What customer notices say. A text is a subject and a body with {variables}: {name},
# {order_ref}, {order_id}, {reason} (why, in the customer's words), {next_step}, {login} (ready:
# the login details), {server_ip}, {support_url}, {signature}, and {closing} (a "Need help?"
# line with support_url, then the signature). {{ and }} write a brace.
# [notify.templates]
# from = "Example Hosting <support@example.com>"  # From of the email (replaces notify.email.from)
# signature = "The Example Hosting team"
# support_url = "https://example.com/support"
# One table per text to replace: provisioning, ready, failed, delayed (failed, a server owned),
# needs_attention, cancelled, resumed.
# [notify.templates.failed]
# subject = "Order {order_ref}: we could not set up your server yet"
# body = "Hi {name},\n\n{reason}.\n\nWhat happens next: {next_step}\n{closing}"

[catalog]
# How often SmartVPS's stock list (ipstock) is read into the package catalog that intake checks
# orders against; `provisioner catalog sync` reads it at once.
sync_interval = "10m"
# A package still sold with this many free addresses or fewer is flagged as low on stock, in
# the log and on the dashboard.
low_stock = 5

# Admin API and dashboard access. Each token has a name, stored in the timeline of every admin
# action taken with it, and a secret sent as `Authorization: Bearer TOKEN` (at least 16
# characters; `provisioner keygen` prints a good one). With no token at all, the admin API and
# the dashboard refuse every request.
# Env: PROVISIONER_ADMIN_TOKENS="alice:TOKEN1,bob:TOKEN2" replaces this list (prefer it).
# [[admin.tokens]]
# name = "alice"
# token = "replace-with-the-output-of-provisioner-keygen"

# Storefronts that may post orders (POST /api/v1/orders), each signing with its own secret
# (HMAC-SHA256; see the README). With none, intake refuses every order. A secret must carry at
# least 128 bits (`provisioner keygen` prints one) and is read from the environment variable
# named by secret_env, never from this file.
# Env: PROVISIONER_STOREFRONTS="shop:SECRET,other:SECRET2" replaces this list.
# [[storefronts]]
# name = "shop"
# secret_env = "SHOP_SIGNING_SECRET"

# The key that encrypts customer passwords at rest is read from PROVISIONER_SECRET_KEY only,
# never from this file.
"#;
