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
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::notify::email::{EmailSettings, SmtpTls};
use crate::notify::webhook::{EVENTS, WebhookEndpoint};
use crate::policy::{OnUnknown, PhasePolicy, RetryPolicy};

/// The file read when no `--config` is given, relative to the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "provisioner.toml";
/// Default `database.url`: an embedded SQLite file next to the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://provisioner.db";
/// Default `server.listen`: loopback only, so a fresh install is not exposed by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default `smartvps.path_prefix`: the production reseller API's (the vendor sheet's `api/ocean/`
/// is wrong for production, hence a setting).
pub const DEFAULT_PATH_PREFIX: &str = "api/oceansmart/";
/// Default `worker.concurrency`: orders one process drives at once. Orders spend nearly all their
/// time waiting (persisted, not in memory), so this bounds in-flight HTTP calls, not orders.
pub const DEFAULT_CONCURRENCY: usize = 32;
/// Default `worker.poll_interval`: how often an idle worker looks for due orders.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default `worker.shutdown_grace`: how long a stopping process lets in-flight calls finish.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Margin added to the computed default lease, for store round trips and clock skew.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

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
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &crate::store::redact_url(&self.url))
            .finish()
    }
}

/// HTTP server settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    /// Address and port the HTTP API binds.
    pub listen: SocketAddr,
}

/// Worker loop settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerSettings {
    /// Orders driven at once by this process.
    pub concurrency: usize,
    /// How long a worker owns an order it picked up. It must outlast the longest step, or another
    /// worker takes the order over mid-purchase; see [`WorkerSettings::default_lease`].
    pub lease: Duration,
    /// How often an idle worker looks for due orders.
    pub poll_interval: Duration,
    /// How long shutdown waits for in-flight steps before abandoning them to lease expiry.
    pub shutdown_grace: Duration,
}

impl WorkerSettings {
    /// The lease used when `worker.lease` is not set: `2 × max(buy.timeout, status.timeout) + 30s`.
    /// A step is at most an ipstock call plus one buyvps (each bounded by the buy timeout) or one
    /// status call; the 30 s cover store round trips and clock skew between workers.
    pub fn default_lease(policy: &RetryPolicy) -> Duration {
        policy
            .buy
            .timeout
            .max(policy.status.timeout)
            .saturating_mul(2)
            .saturating_add(LEASE_MARGIN)
    }

    /// The shortest lease that outlasts one step: a lease must be strictly longer than this.
    pub fn minimum_lease(policy: &RetryPolicy) -> Duration {
        policy
            .buy
            .timeout
            .saturating_mul(2)
            .max(policy.status.timeout)
    }
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

/// A setting that is missing, malformed or inconsistent, named by its TOML key path
/// (`policy.buy.delays`) or by the environment variable it came from (`SMARTVPS_PASSWORD`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config error: `{key}`: {message}")]
pub struct ConfigError {
    /// The TOML key path or environment variable at fault.
    pub key: String,
    /// What is wrong and, where it helps, what would be right.
    pub message: String,
}

impl ConfigError {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
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
            secret_key,
            source: None,
        })
    }
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

# The credentials phase: status calls until the server's credentials are available.
[policy.status]
attempts = 3
timeout = "90s"
delays = ["1m", "2m"]

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

[worker]
# Orders driven at once by this process. Env: PROVISIONER_WORKER_CONCURRENCY
concurrency = 32
# How long a worker owns an order it picked up. Default: 2 x max(buy.timeout, status.timeout)
# + 30s, "4m 30s" with the timeouts above. If set, it must be longer than 2 x buy.timeout and
# longer than status.timeout: a shorter lease lets another worker take over mid-purchase.
# lease = "4m 30s"
# How often an idle worker looks for due orders.
poll_interval = "1s"
# How long shutdown lets in-flight calls finish.
shutdown_grace = "30s"

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

# Webhooks: one [[notify.webhooks]] table per endpoint. Every event is POSTed as JSON and signed
# with HMAC-SHA256 (see "Verifying webhooks" in the README).
# [[notify.webhooks]]
# name = "storefront"                  # stable: part of each delivery's idempotency key
# url = "https://shop.example.com/hooks/provisioner"  # https, or http to this machine only
# secret_env = "STOREFRONT_WEBHOOK_SECRET"  # variable holding the signing secret (or secret = "...")
# trusted = false                      # true: order.ready carries the server's login details
# events = ["order.provisioning", "order.ready", "order.failed", "order.needs_attention", "admin.alert"]

# Email over SMTP: the customer's notices to the order's address, admin alerts to admin_to.
# [notify.email]
# host = "smtp.example.com"
# port = 587                           # default: 587 for starttls, 465 for tls, 25 for none
# tls = "starttls"                     # "starttls", "tls", or "none" (a relay on this machine only)
# username = "mailer"                  # env PROVISIONER_SMTP_USERNAME
# password = "change-me"               # env PROVISIONER_SMTP_PASSWORD (prefer the variable)
# from = "Provisioner <noreply@example.com>"
# admin_to = ["ops@example.com"]

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
# token = "change-me-to-a-long-random-secret"

# The key that encrypts customer passwords at rest is read from PROVISIONER_SECRET_KEY only,
# never from this file.
"#;

// ---------------------------------------------------------------------------------------------
// The file as written: every field optional, durations as text, unknown keys refused.

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a TOML document of tables")]
struct RawFile {
    policy: Option<RawPolicy>,
    smartvps: Option<RawSmartVps>,
    database: Option<RawDatabase>,
    server: Option<RawServer>,
    worker: Option<RawWorker>,
    notify: Option<RawNotify>,
    catalog: Option<RawCatalog>,
    admin: Option<RawAdmin>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [policy] table")]
struct RawPolicy {
    on_unknown: Option<String>,
    buy: Option<RawPhase>,
    status: Option<RawPhase>,
}

#[derive(Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with attempts, timeout and delays"
)]
struct RawPhase {
    attempts: Option<u32>,
    timeout: Option<DurationText>,
    delays: Option<Vec<DurationText>>,
}

// No `Debug` here: it holds the password in the clear.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [smartvps] table")]
struct RawSmartVps {
    base_url: Option<String>,
    path_prefix: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [database] table")]
struct RawDatabase {
    url: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [server] table")]
struct RawServer {
    listen: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [worker] table")]
struct RawWorker {
    concurrency: Option<usize>,
    lease: Option<DurationText>,
    poll_interval: Option<DurationText>,
    shutdown_grace: Option<DurationText>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [notify] table")]
struct RawNotify {
    max_attempts: Option<u32>,
    backoff_base: Option<DurationText>,
    backoff_cap: Option<DurationText>,
    timeout: Option<DurationText>,
    webhooks: Option<Vec<RawWebhook>>,
    email: Option<RawEmail>,
}

// No `Debug`: it can hold a secret in the clear.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[notify.webhooks]] table")]
struct RawWebhook {
    name: Option<String>,
    url: Option<String>,
    secret: Option<String>,
    secret_env: Option<String>,
    trusted: Option<bool>,
    events: Option<Vec<String>>,
}

// No `Debug`: it can hold the password in the clear.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [notify.email] table")]
struct RawEmail {
    host: Option<String>,
    port: Option<u16>,
    tls: Option<String>,
    username: Option<String>,
    password: Option<String>,
    from: Option<String>,
    admin_to: Option<Vec<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [catalog] table")]
struct RawCatalog {
    sync_interval: Option<DurationText>,
    low_stock: Option<u32>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [admin] table")]
struct RawAdmin {
    tokens: Option<Vec<RawAdminToken>>,
}

// No `Debug` here: it holds admin tokens in the clear.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with name and token, as in [[admin.tokens]]"
)]
struct RawAdminToken {
    name: Option<String>,
    token: Option<String>,
}

/// A duration as written. Only strings are accepted, so `timeout = 120` (of unknown unit) is
/// refused with a hint rather than guessed at.
struct DurationText(String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a duration string with its unit, such as "120s" or "2m""#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationText, E> {
                Ok(DurationText(v.to_owned()))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        ConfigError::new(
            key,
            format!("invalid duration {text:?}: {e} (write e.g. \"120s\" or \"2m\")"),
        )
    })
}

// ---------------------------------------------------------------------------------------------
// TOML errors, mapped to the key they are about.

fn parse_file(text: &str) -> Result<RawFile, ConfigError> {
    // Parsing to a spanned document first separates syntax errors from schema errors, and gives
    // the spans that turn a schema error's position back into a key path.
    let document = toml::de::DeTable::parse(text).map_err(|e| syntax_error(text, &e))?;
    toml::from_str::<RawFile>(text).map_err(|e| schema_error(text, document.get_ref(), &e))
}

fn schema_error(
    text: &str,
    document: &toml::de::DeTable<'_>,
    error: &toml::de::Error,
) -> ConfigError {
    let span = error.span();
    let key = span
        .as_ref()
        .and_then(|span| key_at(document, span.start, ""));
    let message = error.message().trim_end();
    if key.as_deref() == Some("secret_key") {
        return ConfigError::new(
            "secret_key",
            format!(
                "is read from the {ENV_SECRET_KEY} environment variable only, never from the file"
            ),
        );
    }
    match (key, span) {
        (Some(key), Some(span)) => {
            ConfigError::new(key, format!("{message} (line {})", line_of(text, &span)))
        }
        (None, Some(span)) => {
            let line = line_of(text, &span);
            ConfigError::new(format!("line {line}"), message)
        }
        (_, None) => ConfigError::new("(file)", message),
    }
}

/// The dotted path of the deepest key whose name or value covers byte `offset`.
fn key_at(table: &toml::de::DeTable<'_>, offset: usize, prefix: &str) -> Option<String> {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{key}", key = key.get_ref())
        };
        // Tables declared with `[a.b]` headers have spans that need not cover their contents, so
        // always look inside them.
        if let Some(inner) = value.get_ref().as_table()
            && let Some(found) = key_at(inner, offset, &path)
        {
            return Some(found);
        }
        // Arrays of tables (`[[notify.webhooks]]`): name the element, `notify.webhooks[1].url`.
        if let Some(items) = value.get_ref().as_array() {
            for (i, item) in items.iter().enumerate() {
                if let Some(inner) = item.get_ref().as_table() {
                    let element = format!("{path}[{i}]");
                    if let Some(found) = key_at(inner, offset, &element) {
                        return Some(found);
                    }
                    if item.span().contains(&offset) {
                        return Some(element);
                    }
                }
            }
        }
        if key.span().contains(&offset) || value.span().contains(&offset) {
            return Some(path);
        }
    }
    None
}

fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let offset = error.span().map_or(text.len(), |span| span.start);
    let line = line_of(text, &(offset..offset));
    let key = key_on_line(text, line).unwrap_or_else(|| format!("line {line}"));
    ConfigError::new(
        key,
        format!(
            "invalid TOML at line {line}: {}",
            error.message().trim_end()
        ),
    )
}

/// 1-based line number of a span's start.
fn line_of(text: &str, span: &Range<usize>) -> usize {
    let end = span.start.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Best-effort key path for a line the TOML parser could not read: the table header above it
/// plus the key written at its start.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let header_of = |l: &str| {
        let l = l.trim();
        l.starts_with('[').then(|| {
            let inner = l.trim_start_matches('[');
            let inner = inner.split(']').next().unwrap_or(inner);
            clean_key(inner)
        })
    };
    let current = lines.get(line.checked_sub(1)?)?;
    if let Some(header) = header_of(current) {
        return Some(header).filter(|h| !h.is_empty());
    }
    let table = lines[..line - 1]
        .iter()
        .rev()
        .find_map(|l| header_of(l))
        .filter(|h| !h.is_empty());
    let key = current.trim();
    let key = (!key.starts_with('#'))
        .then(|| key.split('=').next())
        .flatten()
        .map(clean_key)
        .filter(|k| !k.is_empty());
    match (table, key) {
        (Some(table), Some(key)) => Some(format!("{table}.{key}")),
        (table, key) => key.or(table),
    }
}

fn clean_key(raw: &str) -> String {
    raw.split('.')
        .map(|part| part.trim().trim_matches(['"', '\'']))
        .collect::<Vec<_>>()
        .join(".")
}

// ---------------------------------------------------------------------------------------------
// Raw values plus environment to settings, each checked under the key it came from.

struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.is_empty())
    }

    /// The environment's value (keyed by the variable's name) if set, else the file's (keyed by
    /// its TOML path).
    fn or_file(
        &self,
        name: &'static str,
        file: Option<String>,
        file_key: &str,
    ) -> Option<(String, String)> {
        match self.get(name) {
            Some(value) => Some((value, name.to_owned())),
            None => file.map(|value| (value, file_key.to_owned())),
        }
    }
}

fn resolve_policy(raw: RawPolicy, env: &Env<'_>) -> Result<RetryPolicy, ConfigError> {
    let defaults = RetryPolicy::default();
    let on_unknown = match env.or_file(ENV_ON_UNKNOWN, raw.on_unknown, "policy.on_unknown") {
        Some((text, key)) => OnUnknown::parse(text.trim()).ok_or_else(|| {
            ConfigError::new(
                key,
                format!("must be one of \"reconcile\", \"retry\", \"escalate\"; got {text:?}"),
            )
        })?,
        None => defaults.on_unknown,
    };
    Ok(RetryPolicy {
        buy: resolve_phase(raw.buy.unwrap_or_default(), defaults.buy, "policy.buy")?,
        status: resolve_phase(
            raw.status.unwrap_or_default(),
            defaults.status,
            "policy.status",
        )?,
        on_unknown,
    })
}

fn resolve_phase(
    raw: RawPhase,
    default: PhasePolicy,
    prefix: &str,
) -> Result<PhasePolicy, ConfigError> {
    let timeout = match raw.timeout {
        Some(text) => parse_duration(&format!("{prefix}.timeout"), &text.0)?,
        None => default.timeout,
    };
    let delays = match raw.delays {
        Some(texts) => texts
            .iter()
            .map(|text| parse_duration(&format!("{prefix}.delays"), &text.0))
            .collect::<Result<Vec<_>, _>>()?,
        None => default.delays,
    };
    let phase = PhasePolicy {
        attempts: raw.attempts.unwrap_or(default.attempts),
        timeout,
        delays,
    };
    phase
        .validate()
        .map_err(|(key, message)| ConfigError::new(format!("{prefix}.{key}"), message))?;
    Ok(phase)
}

fn resolve_smartvps(
    raw: RawSmartVps,
    env: &Env<'_>,
) -> Result<Option<SmartVpsSettings>, ConfigError> {
    // Username and password without a base URL are ignored: the simulator needs no account, and a
    // shared environment may export them for other tools.
    let Some((base_url, base_url_key)) =
        env.or_file(ENV_SMARTVPS_BASE_URL, raw.base_url, "smartvps.base_url")
    else {
        return Ok(None);
    };
    let base_url = base_url.trim();
    if !is_http_url(base_url) {
        return Err(ConfigError::new(
            base_url_key,
            format!(
                "must be an http:// or https:// URL such as \"https://smartvps.online/\"; got {base_url:?}"
            ),
        ));
    }
    let base_url = if base_url.ends_with('/') {
        base_url.to_owned()
    } else {
        format!("{base_url}/")
    };
    let required = |name: &'static str, file: Option<String>, key: &str| {
        env.or_file(name, file, key)
            .map(|(value, _)| value)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                ConfigError::new(
                    key,
                    format!("required when smartvps.base_url is set (or set {name})"),
                )
            })
    };
    let username = required(ENV_SMARTVPS_USERNAME, raw.username, "smartvps.username")?;
    let password = required(ENV_SMARTVPS_PASSWORD, raw.password, "smartvps.password")?;
    let path_prefix = env
        .or_file(
            ENV_SMARTVPS_PATH_PREFIX,
            raw.path_prefix,
            "smartvps.path_prefix",
        )
        .map_or_else(|| DEFAULT_PATH_PREFIX.to_owned(), |(value, _)| value);
    Ok(Some(SmartVpsSettings {
        base_url,
        path_prefix,
        username,
        password: SecretString::from(password),
    }))
}

/// `http(s)://` followed by a host, with no whitespace anywhere. Deliberately loose: the client
/// reports anything subtler when it first connects.
fn is_http_url(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    let Some(rest) = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
    else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    !host.is_empty() && !host.starts_with(':') && !text.chars().any(char::is_whitespace)
}

fn resolve_database(raw: RawDatabase, env: &Env<'_>) -> Result<DatabaseSettings, ConfigError> {
    let Some((url, key)) = env.or_file(ENV_DATABASE_URL, raw.url, "database.url") else {
        return Ok(DatabaseSettings {
            url: DEFAULT_DATABASE_URL.to_owned(),
        });
    };
    let url = url.trim().to_owned();
    let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if url.starts_with("sqlite:") || postgres {
        Ok(DatabaseSettings { url })
    } else {
        Err(ConfigError::new(
            key,
            format!(
                "must be a sqlite: URL such as \"{DEFAULT_DATABASE_URL}\" or a postgres:// URL such as \
                 \"postgres://provisioner@db.internal:5432/provisioner\"; got {:?}",
                crate::store::redact_url(&url)
            ),
        ))
    }
}

fn resolve_server(raw: RawServer, env: &Env<'_>) -> Result<ServerSettings, ConfigError> {
    let (text, key) = env
        .or_file(ENV_LISTEN, raw.listen, "server.listen")
        .unwrap_or_else(|| (DEFAULT_LISTEN.to_owned(), "server.listen".to_owned()));
    let listen = text.trim().parse::<SocketAddr>().map_err(|_| {
        ConfigError::new(
            key,
            format!("must be an IP address and port such as \"{DEFAULT_LISTEN}\" (host names are not resolved); got {text:?}"),
        )
    })?;
    Ok(ServerSettings { listen })
}

fn resolve_worker(
    raw: RawWorker,
    policy: &RetryPolicy,
    env: &Env<'_>,
) -> Result<WorkerSettings, ConfigError> {
    let (concurrency, key) = match env.get(ENV_WORKER_CONCURRENCY) {
        Some(text) => {
            let parsed = text.trim().parse::<usize>().map_err(|_| {
                ConfigError::new(
                    ENV_WORKER_CONCURRENCY,
                    format!("must be a whole number of orders; got {text:?}"),
                )
            })?;
            (parsed, ENV_WORKER_CONCURRENCY)
        }
        None => (
            raw.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
            "worker.concurrency",
        ),
    };
    if concurrency == 0 {
        return Err(ConfigError::new(
            key,
            "must be at least 1, or no order is ever worked on",
        ));
    }
    let duration = |text: Option<DurationText>, key: &str, default: Duration| match text {
        Some(text) => parse_duration(key, &text.0),
        None => Ok(default),
    };
    let poll_interval = duration(
        raw.poll_interval,
        "worker.poll_interval",
        DEFAULT_POLL_INTERVAL,
    )?;
    if poll_interval.is_zero() {
        return Err(ConfigError::new(
            "worker.poll_interval",
            "must be greater than zero, or idle workers spin on the store",
        ));
    }
    let shutdown_grace = duration(
        raw.shutdown_grace,
        "worker.shutdown_grace",
        DEFAULT_SHUTDOWN_GRACE,
    )?;
    let lease = match raw.lease {
        Some(text) => {
            let lease = parse_duration("worker.lease", &text.0)?;
            let minimum = WorkerSettings::minimum_lease(policy);
            if lease <= minimum {
                return Err(ConfigError::new(
                    "worker.lease",
                    format!(
                        "must be longer than {} (2 x policy.buy.timeout = {}, and policy.status.timeout = {}): \
                         a lease shorter than a step lets another worker take over an order mid-purchase; got {}",
                        humantime::format_duration(minimum),
                        humantime::format_duration(policy.buy.timeout.saturating_mul(2)),
                        humantime::format_duration(policy.status.timeout),
                        humantime::format_duration(lease),
                    ),
                ));
            }
            lease
        }
        None => WorkerSettings::default_lease(policy),
    };
    Ok(WorkerSettings {
        concurrency,
        lease,
        poll_interval,
        shutdown_grace,
    })
}

fn resolve_notify(raw: RawNotify, env: &Env<'_>) -> Result<NotifySettings, ConfigError> {
    let duration = |text: Option<DurationText>, key: &str, default: Duration| match text {
        Some(text) => {
            let d = parse_duration(key, &text.0)?;
            if d.is_zero() {
                return Err(ConfigError::new(key, "must be greater than zero"));
            }
            Ok(d)
        }
        None => Ok(default),
    };
    let max_attempts = raw.max_attempts.unwrap_or(DEFAULT_NOTIFY_MAX_ATTEMPTS);
    if !(1..=100).contains(&max_attempts) {
        return Err(ConfigError::new(
            "notify.max_attempts",
            format!("must be between 1 and 100; got {max_attempts}"),
        ));
    }
    let backoff_base = duration(
        raw.backoff_base,
        "notify.backoff_base",
        DEFAULT_NOTIFY_BACKOFF_BASE,
    )?;
    let backoff_cap = duration(
        raw.backoff_cap,
        "notify.backoff_cap",
        DEFAULT_NOTIFY_BACKOFF_CAP,
    )?;
    if backoff_cap < backoff_base {
        return Err(ConfigError::new(
            "notify.backoff_cap",
            format!(
                "must be at least notify.backoff_base ({})",
                humantime::format_duration(backoff_base)
            ),
        ));
    }
    let timeout = duration(raw.timeout, "notify.timeout", DEFAULT_NOTIFY_TIMEOUT)?;
    let mut webhooks: Vec<WebhookEndpoint> = Vec::new();
    for (i, hook) in raw.webhooks.unwrap_or_default().into_iter().enumerate() {
        let endpoint = resolve_webhook(hook, &format!("notify.webhooks[{i}]"), env)?;
        if webhooks.iter().any(|w| w.name == endpoint.name) {
            return Err(ConfigError::new(
                format!("notify.webhooks[{i}].name"),
                format!(
                    "{:?} is used by another webhook; names must be unique",
                    endpoint.name
                ),
            ));
        }
        webhooks.push(endpoint);
    }
    let email = raw
        .email
        .map(|e| resolve_email(e, timeout, env))
        .transpose()?;
    Ok(NotifySettings {
        webhooks,
        email,
        max_attempts,
        backoff_base,
        backoff_cap,
        timeout,
    })
}

fn resolve_webhook(
    raw: RawWebhook,
    prefix: &str,
    env: &Env<'_>,
) -> Result<WebhookEndpoint, ConfigError> {
    let key = |k: &str| format!("{prefix}.{k}");
    let name = raw.name.ok_or_else(|| {
        ConfigError::new(
            key("name"),
            "required: a stable name such as \"storefront\"",
        )
    })?;
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(ConfigError::new(
            key("name"),
            format!("must be 1 to 64 of a-z, 0-9, '-' and '_'; got {name:?}"),
        ));
    }
    let text = raw
        .url
        .ok_or_else(|| ConfigError::new(key("url"), "required"))?;
    let url = reqwest::Url::parse(text.trim())
        .map_err(|e| ConfigError::new(key("url"), format!("not a URL: {e}")))?;
    let local = url.host_str().is_some_and(is_loopback_host);
    match url.scheme() {
        "https" => {}
        "http" if local => {}
        _ => {
            return Err(ConfigError::new(
                key("url"),
                "must be https:// (plain http:// only to this machine): events carry customer data",
            ));
        }
    }
    let secret = match (raw.secret, raw.secret_env) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                key("secret"),
                "set secret or secret_env, not both",
            ));
        }
        (Some(secret), None) => (secret, key("secret")),
        (None, Some(var)) => {
            let value = env.get(&var).ok_or_else(|| {
                ConfigError::new(
                    key("secret_env"),
                    format!("names {var}, which is not set (or empty)"),
                )
            })?;
            (value, var)
        }
        (None, None) => {
            return Err(ConfigError::new(
                key("secret_env"),
                "required: the environment variable holding the signing secret (or secret = \"...\")",
            ));
        }
    };
    if secret.0.len() < MIN_WEBHOOK_SECRET {
        return Err(ConfigError::new(
            secret.1,
            format!(
                "must be at least {MIN_WEBHOOK_SECRET} characters (generate one with `openssl rand -hex 32`)"
            ),
        ));
    }
    let events = raw.events.unwrap_or_default();
    if let Some(bad) = events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
        return Err(ConfigError::new(
            key("events"),
            format!("unknown event {bad:?}; known: {}", EVENTS.join(", ")),
        ));
    }
    Ok(WebhookEndpoint {
        name,
        url,
        secret: SecretString::from(secret.0),
        trusted: raw.trusted.unwrap_or(false),
        events,
    })
}

fn resolve_email(
    raw: RawEmail,
    timeout: Duration,
    env: &Env<'_>,
) -> Result<EmailSettings, ConfigError> {
    let host = raw
        .host
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ConfigError::new("notify.email.host", "required in [notify.email]"))?;
    let tls = match raw.tls {
        Some(text) => SmtpTls::parse(text.trim()).ok_or_else(|| {
            ConfigError::new(
                "notify.email.tls",
                format!("must be one of \"starttls\", \"tls\", \"none\"; got {text:?}"),
            )
        })?,
        None => SmtpTls::StartTls,
    };
    if tls == SmtpTls::None && !is_loopback_host(&host) {
        return Err(ConfigError::new(
            "notify.email.tls",
            format!(
                "\"none\" is only for a relay on this machine (the ready email carries a password); {host:?} needs \"starttls\" or \"tls\""
            ),
        ));
    }
    let port = raw.port.unwrap_or_else(|| tls.default_port());
    if port == 0 {
        return Err(ConfigError::new("notify.email.port", "must not be 0"));
    }
    let from_text = raw.from.ok_or_else(|| {
        ConfigError::new(
            "notify.email.from",
            "required, e.g. \"Provisioner <noreply@example.com>\"",
        )
    })?;
    let from = from_text.trim().parse().map_err(|e| {
        ConfigError::new(
            "notify.email.from",
            format!("not an address ({e}): {from_text:?}"),
        )
    })?;
    let admin_to = raw
        .admin_to
        .unwrap_or_default()
        .iter()
        .map(|a| {
            a.trim().parse().map_err(|e| {
                ConfigError::new(
                    "notify.email.admin_to",
                    format!("not an address ({e}): {a:?}"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let username = env
        .or_file(ENV_SMTP_USERNAME, raw.username, "notify.email.username")
        .map(|(v, _)| v);
    let password = env
        .or_file(ENV_SMTP_PASSWORD, raw.password, "notify.email.password")
        .map(|(v, _)| v);
    match (&username, &password) {
        (Some(_), None) => {
            return Err(ConfigError::new(
                "notify.email.password",
                format!("required with a username (or set {ENV_SMTP_PASSWORD})"),
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "notify.email.username",
                format!("required with a password (or set {ENV_SMTP_USERNAME})"),
            ));
        }
        _ => {}
    }
    Ok(EmailSettings {
        host,
        port,
        tls,
        username,
        password: password.map(SecretString::from),
        from,
        admin_to,
        timeout,
    })
}

/// `localhost` or a loopback address: traffic that never leaves the machine.
fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn resolve_catalog(raw: RawCatalog) -> Result<CatalogSettings, ConfigError> {
    let sync_interval = match raw.sync_interval {
        Some(text) => parse_duration("catalog.sync_interval", &text.0)?,
        None => DEFAULT_CATALOG_SYNC_INTERVAL,
    };
    if sync_interval < Duration::from_secs(1) {
        return Err(ConfigError::new(
            "catalog.sync_interval",
            "must be at least 1s, or the stock list is polled in a loop",
        ));
    }
    Ok(CatalogSettings {
        sync_interval,
        low_stock: raw.low_stock.unwrap_or(DEFAULT_LOW_STOCK),
    })
}

/// Admin tokens from `PROVISIONER_ADMIN_TOKENS` when set (it replaces the file's list), else from
/// `[[admin.tokens]]`. No error message ever contains a token.
fn resolve_admin(raw: RawAdmin, env: &Env<'_>) -> Result<AdminSettings, ConfigError> {
    let entries: Vec<(String, Option<String>, Option<String>)> = match env.get(ENV_ADMIN_TOKENS) {
        Some(text) => text
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
            .map(|(i, entry)| match entry.split_once(':') {
                Some((name, token)) => Ok((
                    ENV_ADMIN_TOKENS.to_owned(),
                    Some(name.trim().to_owned()),
                    Some(token.trim().to_owned()),
                )),
                // The entry itself is not echoed: it may be a token with its name forgotten.
                None => Err(ConfigError::new(
                    ENV_ADMIN_TOKENS,
                    format!(
                        "entry {} is not NAME:TOKEN (entries are separated by commas)",
                        i + 1
                    ),
                )),
            })
            .collect::<Result<_, _>>()?,
        None => raw
            .tokens
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, t)| (format!("admin.tokens[{i}]"), t.name, t.token))
            .collect(),
    };
    let mut tokens: Vec<AdminToken> = Vec::with_capacity(entries.len());
    for (at, name, token) in entries {
        // File entries are named by their own key; environment entries by the variable.
        let key = |field: &str| {
            if at == ENV_ADMIN_TOKENS {
                at.clone()
            } else {
                format!("{at}.{field}")
            }
        };
        let name = name.unwrap_or_default();
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
        if !valid_name {
            return Err(ConfigError::new(
                key("name"),
                format!(
                    "a token's name must be 1 to 64 letters, digits, '.', '_', '@' or '-'; got {name:?}"
                ),
            ));
        }
        let token = token.unwrap_or_default();
        if token.chars().count() < MIN_ADMIN_TOKEN_LEN || token.chars().any(char::is_whitespace) {
            return Err(ConfigError::new(
                key("token"),
                format!(
                    "the token of {name:?} must be at least {MIN_ADMIN_TOKEN_LEN} characters without spaces \
                     (`provisioner keygen` prints a good one)"
                ),
            ));
        }
        if tokens.iter().any(|t| t.name == name) {
            return Err(ConfigError::new(
                key("name"),
                format!("{name:?} is named twice: the name says who acted, so it must be unique"),
            ));
        }
        if tokens
            .iter()
            .any(|t| secrecy::ExposeSecret::expose_secret(&t.token) == token)
        {
            return Err(ConfigError::new(
                key("token"),
                format!(
                    "the token of {name:?} is also another admin's: each admin needs their own"
                ),
            ));
        }
        tokens.push(AdminToken {
            name,
            token: SecretString::from(token),
        });
    }
    Ok(AdminSettings { tokens })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use secrecy::ExposeSecret;

    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_sources(Some(text), &no_env)
    }

    fn key_of(result: Result<Settings, ConfigError>) -> String {
        result.expect_err("expected a config error").key
    }

    const SMARTVPS: &str = "[smartvps]\nbase_url = \"https://smartvps.online\"\nusername = \"reseller\"\npassword = \"hunter2\"\n";

    #[test]
    fn defaults_are_the_seed() {
        let s = Settings::from_sources(None, &no_env).unwrap();
        assert_eq!(s.policy, RetryPolicy::default());
        assert_eq!(s.policy.buy.attempts, 3);
        assert_eq!(s.policy.buy.timeout, Duration::from_secs(120));
        assert_eq!(
            s.policy.buy.delays,
            [Duration::from_secs(120), Duration::from_secs(180)]
        );
        assert_eq!(s.policy.status.timeout, Duration::from_secs(90));
        assert_eq!(
            s.policy.status.delays,
            [Duration::from_secs(60), Duration::from_secs(120)]
        );
        assert_eq!(s.policy.on_unknown, OnUnknown::Reconcile);
        assert!(s.smartvps.is_none());
        assert_eq!(s.database.url, "sqlite://provisioner.db");
        assert_eq!(s.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.worker.concurrency, 32);
        assert_eq!(s.worker.lease, Duration::from_secs(2 * 120 + 30));
        assert_eq!(s.worker.poll_interval, Duration::from_secs(1));
        assert_eq!(s.worker.shutdown_grace, Duration::from_secs(30));
        assert_eq!(s.catalog.sync_interval, Duration::from_secs(600));
        assert_eq!(s.catalog.low_stock, 5);
        assert!(s.admin.tokens.is_empty());
        assert!(s.secret_key.is_none() && s.source.is_none());
    }

    #[test]
    fn example_parses_to_the_defaults() {
        let example = from_toml(example_toml()).unwrap();
        let defaults = Settings::default();
        assert_eq!(example.policy, defaults.policy);
        assert_eq!(example.database, defaults.database);
        assert_eq!(example.server, defaults.server);
        assert_eq!(example.worker, defaults.worker);
        assert_eq!(example.catalog, defaults.catalog);
        assert!(example.admin.tokens.is_empty());
        assert!(example.smartvps.is_none());
    }

    #[test]
    fn example_smartvps_and_lease_blocks_parse_when_uncommented() {
        let s = from_toml(&uncommented(&[
            "# [smartvps]",
            "# lease",
            "# [[admin.tokens]]",
        ]))
        .unwrap();
        let smartvps = s.smartvps.expect("smartvps section is active");
        assert_eq!(smartvps.base_url, "https://smartvps.online/");
        assert_eq!(smartvps.path_prefix, DEFAULT_PATH_PREFIX);
        assert_eq!(s.worker.lease, WorkerSettings::default_lease(&s.policy));
        assert_eq!(s.admin.tokens.len(), 1);
        assert_eq!(s.admin.tokens[0].name, "alice");
        assert!(s.notify.webhooks.is_empty() && s.notify.email.is_none());
    }

    /// The example with the commented-out blocks that start with one of `starts` made live: a
    /// block runs from its first line to the next blank line or prose comment.
    fn uncommented(starts: &[&str]) -> String {
        let mut live = false;
        example_toml()
            .lines()
            .map(|line| {
                if starts.iter().any(|s| line.starts_with(s)) {
                    live = true;
                }
                let prose = line
                    .strip_prefix("# ")
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()));
                if line.trim().is_empty() || prose {
                    live = false;
                }
                if live { &line[2..] } else { line }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn readme_reproduces_the_example() {
        // The README's configuration reference is this text; regenerate it when this fails.
        let readme = include_str!("../README.md");
        assert!(
            readme.contains(example_toml()),
            "README.md's config reference is out of date"
        );
    }

    #[test]
    fn example_notify_blocks_parse_when_uncommented() {
        let text = uncommented(&["# [[notify.webhooks]]", "# [notify.email]"]);
        let env = env_of(&[
            ("STOREFRONT_WEBHOOK_SECRET", "0123456789abcdef0123"),
            ("PROVISIONER_SMTP_PASSWORD", "smtp-pass"),
        ]);
        let s = Settings::from_sources(Some(&text), &env).unwrap();
        let hook = &s.notify.webhooks[0];
        assert_eq!(hook.name, "storefront");
        assert_eq!(
            hook.url.as_str(),
            "https://shop.example.com/hooks/provisioner"
        );
        assert_eq!(hook.secret.expose_secret(), "0123456789abcdef0123");
        assert!(!hook.trusted);
        assert_eq!(hook.events.len(), 5);
        let email = s.notify.email.as_ref().unwrap();
        assert_eq!(
            (email.host.as_str(), email.port, email.tls),
            ("smtp.example.com", 587, SmtpTls::StartTls)
        );
        // The variable wins over the file's password.
        assert_eq!(
            email.password.as_ref().unwrap().expose_secret(),
            "smtp-pass"
        );
        assert_eq!(email.from.email.to_string(), "noreply@example.com");
        assert_eq!(email.admin_to.len(), 1);
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("0123456789abcdef0123") && !debug.contains("smtp-pass"),
            "{debug}"
        );
    }

    #[test]
    fn notify_defaults_and_values_are_checked_under_their_keys() {
        let n = Settings::default().notify;
        assert_eq!(n.max_attempts, 12);
        assert_eq!(
            (n.backoff_base, n.backoff_cap),
            (Duration::from_secs(5), Duration::from_secs(3600))
        );
        let hook = "[[notify.webhooks]]\nname = \"shop\"\nurl = \"https://shop.example/h\"\nsecret = \"0123456789abcdef\"\n";
        assert_eq!(from_toml(hook).unwrap().notify.webhooks[0].name, "shop");
        for (text, key) in [
            ("[notify]\nmax_attempts = 0\n", "notify.max_attempts"),
            ("[notify]\nbackoff_base = \"soon\"\n", "notify.backoff_base"),
            ("[notify]\nbackoff_base = \"2h\"\n", "notify.backoff_cap"),
            ("[notify]\nretries = 3\n", "notify.retries"),
            (
                &hook.replace("https://shop.example/h", "http://shop.example/h"),
                "notify.webhooks[0].url",
            ),
            (
                &hook.replace("0123456789abcdef", "short"),
                "notify.webhooks[0].secret",
            ),
            (
                &hook.replace("shop\"", "Shop Front\""),
                "notify.webhooks[0].name",
            ),
            (
                &format!("{hook}events = [\"order.shipped\"]\n"),
                "notify.webhooks[0].events",
            ),
            (
                &format!("{hook}secret_env = \"X\"\n"),
                "notify.webhooks[0].secret",
            ),
            (&format!("{hook}{hook}"), "notify.webhooks[1].name"),
            (
                &format!(
                    "{hook}\n[[notify.webhooks]]\nname = \"b\"\nurl = \"https://b.example\"\nsecret_env = \"UNSET_VAR\"\n"
                ),
                "notify.webhooks[1].secret_env",
            ),
            (
                &format!("{hook}\n[[notify.webhooks]]\nnmae = \"b\"\n"),
                "notify.webhooks[1].nmae",
            ),
            ("[notify.email]\nfrom = \"a@b.co\"\n", "notify.email.host"),
            (
                "[notify.email]\nhost = \"smtp.example\"\n",
                "notify.email.from",
            ),
            (
                "[notify.email]\nhost = \"smtp.example\"\nfrom = \"a@b.co\"\ntls = \"none\"\n",
                "notify.email.tls",
            ),
            (
                "[notify.email]\nhost = \"smtp.example\"\nfrom = \"a@b.co\"\ntls = \"ssl\"\n",
                "notify.email.tls",
            ),
            (
                "[notify.email]\nhost = \"smtp.example\"\nfrom = \"not an address\"\n",
                "notify.email.from",
            ),
            (
                "[notify.email]\nhost = \"smtp.example\"\nfrom = \"a@b.co\"\nadmin_to = [\"x\"]\n",
                "notify.email.admin_to",
            ),
            (
                "[notify.email]\nhost = \"smtp.example\"\nfrom = \"a@b.co\"\nusername = \"u\"\n",
                "notify.email.password",
            ),
        ] {
            assert_eq!(key_of(from_toml(text)), key, "{text}");
        }
        // A relay on this machine may be plain; its port defaults to 25.
        let local =
            from_toml("[notify.email]\nhost = \"127.0.0.1\"\nfrom = \"a@b.co\"\ntls = \"none\"\n")
                .unwrap();
        assert_eq!(local.notify.email.unwrap().port, 25);
        // A secret too short from the environment is named by its variable.
        let text = "[[notify.webhooks]]\nname = \"s\"\nurl = \"https://s.example\"\nsecret_env = \"HOOK_SECRET\"\n";
        let err =
            Settings::from_sources(Some(text), &env_of(&[("HOOK_SECRET", "abc")])).unwrap_err();
        assert_eq!(err.key, "HOOK_SECRET");
    }

    #[test]
    fn catalog_settings_are_read_and_checked() {
        let s = from_toml("[catalog]\nsync_interval = \"30s\"\nlow_stock = 0\n").unwrap();
        assert_eq!(s.catalog.sync_interval, Duration::from_secs(30));
        assert_eq!(s.catalog.low_stock, 0);
        assert_eq!(
            key_of(from_toml("[catalog]\nsync_interval = \"0s\"\n")),
            "catalog.sync_interval"
        );
        assert_eq!(
            key_of(from_toml("[catalog]\nlow_stock = -1\n")),
            "catalog.low_stock"
        );
        assert_eq!(
            key_of(from_toml("[catalog]\nlowstock = 1\n")),
            "catalog.lowstock"
        );
    }

    const ALICE: &str = "alice-token-0123456789";
    const BOB: &str = "bob-token-0123456789ab";

    #[test]
    fn admin_tokens_come_from_the_file_or_the_environment() {
        let file = format!(
            "[[admin.tokens]]\nname = \"alice\"\ntoken = \"{ALICE}\"\n[[admin.tokens]]\nname = \"bob\"\ntoken = \"{BOB}\"\n"
        );
        let s = from_toml(&file).unwrap();
        let names: Vec<&str> = s.admin.tokens.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        assert_eq!(s.admin.tokens[1].token.expose_secret(), BOB);
        // The inline-array spelling is the same data.
        let inline = format!("[admin]\ntokens = [{{ name = \"alice\", token = \"{ALICE}\" }}]\n");
        assert_eq!(from_toml(&inline).unwrap().admin.tokens.len(), 1);
        // The environment replaces the file's list.
        let env = env_of(&[("PROVISIONER_ADMIN_TOKENS", &format!(" carol:{BOB} , "))]);
        let s = Settings::from_sources(Some(&file), &env).unwrap();
        assert_eq!(s.admin.tokens.len(), 1);
        assert_eq!(s.admin.tokens[0].name, "carol");
        assert_eq!(s.admin.tokens[0].token.expose_secret(), BOB);
    }

    #[test]
    fn bad_admin_tokens_name_their_key_and_never_echo_the_token() {
        let cases = [
            (
                "[[admin.tokens]]\nname = \"alice\"\ntoken = \"short\"\n".to_string(),
                "admin.tokens[0].token",
                "short",
            ),
            (
                format!("[[admin.tokens]]\nname = \"al ice\"\ntoken = \"{ALICE}\"\n"),
                "admin.tokens[0].name",
                ALICE,
            ),
            (
                format!("[[admin.tokens]]\ntoken = \"{ALICE}\"\n"),
                "admin.tokens[0].name",
                ALICE,
            ),
            (
                format!(
                    "[[admin.tokens]]\nname = \"a\"\ntoken = \"{ALICE}\"\n[[admin.tokens]]\nname = \"a\"\ntoken = \"{BOB}\"\n"
                ),
                "admin.tokens[1].name",
                BOB,
            ),
            (
                format!(
                    "[[admin.tokens]]\nname = \"a\"\ntoken = \"{ALICE}\"\n[[admin.tokens]]\nname = \"b\"\ntoken = \"{ALICE}\"\n"
                ),
                "admin.tokens[1].token",
                ALICE,
            ),
            (
                format!("[[admin.tokens]]\nname = \"a\"\ntoken = \"{ALICE}\"\nrole = \"x\"\n"),
                "admin.tokens[0].role",
                ALICE,
            ),
        ];
        for (text, key, secret) in cases {
            let err = from_toml(&text).unwrap_err();
            assert_eq!(err.key, key, "{text}");
            assert!(!err.to_string().contains(secret), "{err}");
        }
        for value in [
            ALICE.to_string(),
            format!("alice:{ALICE},bob"),
            "alice:short".into(),
        ] {
            let err =
                Settings::from_sources(None, &env_of(&[("PROVISIONER_ADMIN_TOKENS", &value)]))
                    .unwrap_err();
            assert_eq!(err.key, "PROVISIONER_ADMIN_TOKENS");
            assert!(
                !err.to_string().contains(ALICE) && !err.to_string().contains("short"),
                "{err}"
            );
        }
    }

    #[test]
    fn durations_and_sections_are_read() {
        let s = from_toml(
            "[policy]\non_unknown = \"escalate\"\n[policy.buy]\nattempts = 2\ntimeout = \"45s\"\ndelays = [\"1m 30s\"]\n\
             [worker]\nconcurrency = 4\npoll_interval = \"250ms\"\n",
        )
        .unwrap();
        assert_eq!(s.policy.on_unknown, OnUnknown::Escalate);
        assert_eq!(s.policy.buy.attempts, 2);
        assert_eq!(s.policy.buy.timeout, Duration::from_secs(45));
        assert_eq!(s.policy.buy.delays, [Duration::from_secs(90)]);
        assert_eq!(s.policy.status, RetryPolicy::default().status);
        assert_eq!(s.worker.concurrency, 4);
        assert_eq!(s.worker.poll_interval, Duration::from_millis(250));
        // The default lease follows the configured timeouts: 2 x max(45s, 90s) + 30s.
        assert_eq!(s.worker.lease, Duration::from_secs(210));
    }

    #[test]
    fn unparseable_duration_names_its_key() {
        let err = from_toml("[policy.buy]\ntimeout = \"abc\"\n").unwrap_err();
        assert_eq!(err.key, "policy.buy.timeout");
        assert!(
            err.message.starts_with("invalid duration \"abc\": "),
            "{}",
            err.message
        );
        assert!(
            err.to_string()
                .starts_with("config error: `policy.buy.timeout`: invalid duration \"abc\"")
        );
        assert_eq!(
            key_of(from_toml(
                "[policy.status]\ndelays = [\"1m\", \"2 fortnights\"]\n"
            )),
            "policy.status.delays"
        );
        assert_eq!(
            key_of(from_toml("[worker]\nshutdown_grace = \"soon\"\n")),
            "worker.shutdown_grace"
        );
    }

    #[test]
    fn duration_without_unit_is_refused_with_a_hint() {
        let err = from_toml("[policy.buy]\ntimeout = 120\n").unwrap_err();
        assert_eq!(err.key, "policy.buy.timeout");
        assert!(err.message.contains("\"120s\""), "{}", err.message);
    }

    #[test]
    fn delay_count_and_attempts_are_checked_by_the_phase() {
        let err = from_toml("[policy.buy]\nattempts = 3\ndelays = [\"2m\"]\n").unwrap_err();
        assert_eq!(err.key, "policy.buy.delays");
        assert!(
            err.to_string().starts_with(
                "config error: `policy.buy.delays`: needs exactly attempts - 1 = 2 wait(s)"
            ),
            "{err}"
        );
        assert_eq!(
            key_of(from_toml("[policy.status]\nattempts = 0\ndelays = []\n")),
            "policy.status.attempts"
        );
        assert_eq!(
            key_of(from_toml("[policy.status]\ntimeout = \"0s\"\n")),
            "policy.status.timeout"
        );
    }

    #[test]
    fn unknown_keys_name_their_full_path() {
        let err = from_toml("[policy.buy]\natempts = 3\n").unwrap_err();
        assert_eq!(err.key, "policy.buy.atempts");
        assert!(
            err.message.contains("unknown field `atempts`"),
            "{}",
            err.message
        );
        assert_eq!(
            key_of(from_toml("[policy]\nbuy.atempts = 3\n")),
            "policy.buy.atempts"
        );
        assert_eq!(key_of(from_toml("[polcy]\n")), "polcy");
        assert_eq!(
            key_of(from_toml("[worker]\nconcurency = 3\n")),
            "worker.concurency"
        );
        assert_eq!(
            key_of(from_toml(&format!("{SMARTVPS}token = \"x\"\n"))),
            "smartvps.token"
        );
    }

    #[test]
    fn wrong_types_name_their_key() {
        assert_eq!(
            key_of(from_toml("[policy.buy]\nattempts = \"three\"\n")),
            "policy.buy.attempts"
        );
        assert_eq!(
            key_of(from_toml("[policy.buy]\nattempts = -1\n")),
            "policy.buy.attempts"
        );
        assert_eq!(
            key_of(from_toml("[worker]\nconcurrency = \"many\"\n")),
            "worker.concurrency"
        );
        assert_eq!(key_of(from_toml("policy = 3\n")), "policy");
    }

    #[test]
    fn syntax_errors_name_the_nearest_key() {
        let err = from_toml("[policy.buy]\nattempts = = 3\n").unwrap_err();
        assert_eq!(err.key, "policy.buy.attempts");
        assert!(
            err.message.starts_with("invalid TOML at line 2"),
            "{}",
            err.message
        );
        assert_eq!(
            key_of(from_toml("[server]\nlisten = \"127.0.0.1:80\n")),
            "server.listen"
        );
    }

    #[test]
    fn secret_key_is_refused_in_the_file() {
        let err = from_toml("secret_key = \"abc\"\n").unwrap_err();
        assert_eq!(err.key, "secret_key");
        assert!(
            err.message.contains("PROVISIONER_SECRET_KEY"),
            "{}",
            err.message
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(
            key_of(from_toml("[worker]\nconcurrency = 0\n")),
            "worker.concurrency"
        );
        assert_eq!(
            key_of(from_toml("[worker]\npoll_interval = \"0s\"\n")),
            "worker.poll_interval"
        );
        assert_eq!(
            key_of(from_toml("[server]\nlisten = \"localhost:8080\"\n")),
            "server.listen"
        );
        assert_eq!(
            key_of(from_toml("[policy]\non_unknown = \"ignore\"\n")),
            "policy.on_unknown"
        );
        let err = from_toml("[database]\nurl = \"mysql://app:hunter2@db\"\n").unwrap_err();
        assert_eq!(err.key, "database.url");
        assert!(err.message.contains("postgres://"), "{}", err.message);
        assert!(!err.message.contains("hunter2"), "{}", err.message);
    }

    #[test]
    fn postgres_urls_are_accepted_and_their_password_never_shown() {
        for url in [
            "postgres://app:hunter2@db.internal:5432/provisioner",
            "postgresql://app:hunter2@db.internal/provisioner",
        ] {
            let s = from_toml(&format!("[database]\nurl = \"{url}\"\n")).unwrap();
            assert_eq!(s.database.url, url);
            let debug = format!("{s:?}");
            assert!(!debug.contains("hunter2"), "{debug}");
            assert!(debug.contains("app:***@db.internal"), "{debug}");
        }
        let env = env_of(&[(
            "PROVISIONER_DATABASE_URL",
            "postgres://app:hunter2@127.0.0.1/x",
        )]);
        let s = Settings::from_sources(None, &env).unwrap();
        assert_eq!(s.database.url, "postgres://app:hunter2@127.0.0.1/x");
    }

    #[test]
    fn smartvps_needs_a_url_like_base_url_and_an_account() {
        for bad in [
            "smartvps.online",
            "ftp://smartvps.online",
            "https://",
            "https://smart vps.online",
        ] {
            let text = SMARTVPS.replace("https://smartvps.online", bad);
            assert_eq!(key_of(from_toml(&text)), "smartvps.base_url", "{bad}");
        }
        let err = from_toml(
            "[smartvps]\nbase_url = \"https://smartvps.online/\"\nusername = \"reseller\"\n",
        )
        .unwrap_err();
        assert_eq!(err.key, "smartvps.password");
        assert_eq!(
            err.message,
            "required when smartvps.base_url is set (or set SMARTVPS_PASSWORD)"
        );
        let err =
            from_toml("[smartvps]\nbase_url = \"https://smartvps.online/\"\npassword = \"x\"\n")
                .unwrap_err();
        assert_eq!(err.key, "smartvps.username");
        // An account without a base URL is ignored: the simulator is used.
        let s = from_toml("[smartvps]\nusername = \"reseller\"\npassword = \"x\"\n").unwrap();
        assert!(s.smartvps.is_none());
        let s = from_toml(SMARTVPS).unwrap();
        let smartvps = s.smartvps.unwrap();
        assert_eq!(smartvps.base_url, "https://smartvps.online/");
        assert_eq!(smartvps.path_prefix, "api/oceansmart/");
        assert_eq!(smartvps.password.expose_secret(), "hunter2");
    }

    #[test]
    fn lease_must_outlast_a_step() {
        // 2 x buy.timeout = 4m is the longest step with the seed's timeouts.
        let err = from_toml("[worker]\nlease = \"4m\"\n").unwrap_err();
        assert_eq!(err.key, "worker.lease");
        assert!(err.message.contains("mid-purchase"), "{}", err.message);
        assert_eq!(
            from_toml("[worker]\nlease = \"4m 1s\"\n")
                .unwrap()
                .worker
                .lease,
            Duration::from_secs(241)
        );
        // The status timeout alone can be the longest step.
        let text = "[policy.status]\ntimeout = \"10m\"\n[worker]\nlease = \"9m\"\n";
        assert_eq!(key_of(from_toml(text)), "worker.lease");
    }

    #[test]
    fn environment_wins_over_the_file() {
        let env = env_of(&[
            ("SMARTVPS_BASE_URL", "https://smartvps.store"),
            ("SMARTVPS_PATH_PREFIX", "api/ocean/"),
            ("SMARTVPS_USERNAME", "from-env"),
            ("SMARTVPS_PASSWORD", "env-secret"),
            ("PROVISIONER_DATABASE_URL", "sqlite::memory:"),
            ("PROVISIONER_LISTEN", "0.0.0.0:9000"),
            ("PROVISIONER_ON_UNKNOWN", "retry"),
            ("PROVISIONER_WORKER_CONCURRENCY", "8"),
            ("PROVISIONER_SECRET_KEY", "k3y"),
        ]);
        let file = format!(
            "{SMARTVPS}[database]\nurl = \"sqlite://file.db\"\n[server]\nlisten = \"127.0.0.1:1\"\n[worker]\nconcurrency = 2\n"
        );
        let s = Settings::from_sources(Some(&file), &env).unwrap();
        let smartvps = s.smartvps.as_ref().unwrap();
        assert_eq!(smartvps.base_url, "https://smartvps.store/");
        assert_eq!(smartvps.path_prefix, "api/ocean/");
        assert_eq!(smartvps.username, "from-env");
        assert_eq!(smartvps.password.expose_secret(), "env-secret");
        assert_eq!(s.database.url, "sqlite::memory:");
        assert_eq!(s.server.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(s.policy.on_unknown, OnUnknown::Retry);
        assert_eq!(s.worker.concurrency, 8);
        assert_eq!(s.secret_key.as_ref().unwrap().expose_secret(), "k3y");
    }

    #[test]
    fn environment_completes_the_file_and_empty_values_are_unset() {
        let file = "[smartvps]\nbase_url = \"https://smartvps.online/\"\nusername = \"reseller\"\n";
        let s = Settings::from_sources(Some(file), &env_of(&[("SMARTVPS_PASSWORD", "p")])).unwrap();
        assert_eq!(s.smartvps.unwrap().password.expose_secret(), "p");
        let err =
            Settings::from_sources(Some(file), &env_of(&[("SMARTVPS_PASSWORD", "")])).unwrap_err();
        assert_eq!(err.key, "smartvps.password");
        // SMARTVPS_BASE_URL alone switches the simulator off and so needs the account too.
        let err =
            Settings::from_sources(None, &env_of(&[("SMARTVPS_BASE_URL", "https://x.example")]))
                .unwrap_err();
        assert_eq!(err.key, "smartvps.username");
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        for (name, value) in [
            ("PROVISIONER_WORKER_CONCURRENCY", "lots"),
            ("PROVISIONER_WORKER_CONCURRENCY", "0"),
            ("PROVISIONER_LISTEN", "nowhere"),
            ("PROVISIONER_ON_UNKNOWN", "shrug"),
            ("PROVISIONER_DATABASE_URL", "mysql://db"),
            ("SMARTVPS_BASE_URL", "smartvps.online"),
        ] {
            let env = env_of(&[(name, value)]);
            let err = Settings::from_sources(None, &env).unwrap_err();
            assert_eq!(err.key, name, "{value}");
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let env = env_of(&[
            ("PROVISIONER_SECRET_KEY", "top-secret-key"),
            ("PROVISIONER_ADMIN_TOKENS", "alice:admin-secret-token-123"),
        ]);
        let s = Settings::from_sources(Some(SMARTVPS), &env).unwrap();
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("hunter2")
                && !debug.contains("top-secret-key")
                && !debug.contains("admin-secret-token-123"),
            "{debug}"
        );
        assert!(debug.contains("REDACTED"), "{debug}");
        let debug = format!("{:?}", s.smartvps.unwrap());
        assert!(
            !debug.contains("hunter2") && debug.contains("reseller"),
            "{debug}"
        );
    }

    #[test]
    fn load_reads_an_explicit_file_and_reports_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custom.toml");
        std::fs::write(&path, "[worker]\nconcurrency = 5\n").unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.worker.concurrency, 5);
        assert_eq!(s.source.as_deref(), Some(path.as_path()));
        let missing = dir.path().join("missing.toml");
        let err = Settings::load(Some(&missing)).unwrap_err();
        assert_eq!(err.key, missing.display().to_string());
    }
}
