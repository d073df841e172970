//! The command types: every subcommand, flag and argument, as clap parses them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::telemetry::LogFormat;

/// Turns paid VPS orders into running SmartVPS servers with delivered credentials, never buying twice.
#[derive(Debug, Parser)]
#[command(name = "provisioner", version, about)]
pub struct Cli {
    /// Config file (default: ./provisioner.toml when present, else built-in defaults).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API and the worker (on the built-in simulator unless smartvps.base_url is set).
    Serve,
    /// Run the whole job on embedded defaults: simulator, service and SQLite, one order per seed case.
    Demo {
        /// How many simulated seconds pass per real second (1 to 100000).
        #[arg(long, default_value_t = 60.0, value_parser = parse_speed)]
        speed: f64,
        /// Leave the service running on its database afterwards, to explore the dashboard
        /// (stop it with Ctrl-C; the database is kept).
        #[arg(long)]
        keep: bool,
    },
    /// Print the seed's total-time analysis for the configured policy.
    Plan {
        /// How long a successful buyVps takes.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        buy_latency: Duration,
        /// How long a successful status call takes.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        status_latency: Duration,
        /// How long SmartVPS takes to install an image (changeos, format).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
        install_time: Duration,
        /// Print the analysis as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the SmartVPS simulator alone, speaking the production wire.
    Simulator {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        /// Basic-auth username it accepts.
        #[arg(long, default_value = "demo")]
        username: String,
        /// Basic-auth password it accepts.
        #[arg(
            long,
            env = "SIMULATOR_PASSWORD",
            default_value = "demo",
            hide_env_values = true
        )]
        password: String,
        /// Path prefix of the endpoints.
        #[arg(long, default_value = "api/oceansmart/")]
        path_prefix: String,
        /// Random seed for generated addresses, passwords and faults (default: from the clock,
        /// so a restarted simulator does not hand out the same servers again).
        #[arg(long)]
        seed: Option<u64>,
        /// Random faults on every call, as in the deterministic simulation: timeouts, late
        /// completions (up to the 10-minute horizon), 5xx after buying, bare errors, garbled
        /// replies, wrong-package addresses, status failures.
        #[arg(long, default_value = "none", value_parser = ["none", "calm", "flaky", "hostile"])]
        profile: String,
    },
    /// Inspect and act on orders: in the configured database, or with --api through a running
    /// service's admin API.
    Orders {
        /// A running service's base URL (e.g. http://127.0.0.1:8080); without it the configured
        /// database is used directly.
        #[arg(long, global = true, value_name = "URL")]
        api: Option<String>,
        /// Admin token for --api (its name is recorded as who acted).
        #[arg(
            long,
            global = true,
            env = "PROVISIONER_ADMIN_TOKEN",
            hide_env_values = true,
            value_name = "TOKEN"
        )]
        token: Option<String>,
        /// Print the result as JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
        /// What to do.
        #[command(subcommand)]
        action: OrdersAction,
    },
    /// The package catalog (SmartVPS's stock list) in the configured database.
    Catalog {
        /// Print the result as JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
        /// What to do.
        #[command(subcommand)]
        action: CatalogAction,
    },
    /// Benchmarks.
    Bench {
        /// Which benchmark.
        #[command(subcommand)]
        which: BenchCommand,
    },
    /// Print a fresh PROVISIONER_SECRET_KEY.
    Keygen,
}

/// `orders` subcommands.
#[derive(Debug, Subcommand)]
pub enum OrdersAction {
    /// List orders, newest first.
    List {
        /// Only this state (queued, buying, awaiting_credentials, ready, failed, needs_attention, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only this package (PID).
        #[arg(long)]
        package: Option<u32>,
        /// Created at or after (RFC 3339, e.g. 2026-05-01T10:00:00Z, or a date).
        #[arg(long)]
        from: Option<String>,
        /// Created before (RFC 3339 or a date).
        #[arg(long)]
        to: Option<String>,
        /// At most this many (1 to 500).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Skip this many (paging).
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// One order with its timeline, purchase ledger and notifications.
    Show {
        /// The order: its id, its order_ref, or the short id the dashboard shows.
        id: String,
    },
    /// Find orders by order_ref or customer email (any part, any case) or server IP (exact).
    Search {
        /// What to look for.
        text: String,
        /// At most this many (1 to 500).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Retry every failed order (of one phase) with one reason; refusals are listed.
    RetryFailed {
        /// Only orders that failed in this phase.
        #[arg(long, value_enum)]
        phase: Option<PhaseArg>,
        /// Why (stored in each order's timeline).
        #[arg(long)]
        reason: String,
        /// Who (database only, as for retry).
        #[arg(long)]
        actor: Option<String>,
    },
    /// Mark every failed order (of one phase) resolved: handled outside the service, it leaves
    /// the failed queue as cancelled with the reason on record. Orders owning a server are left.
    ResolveFailed {
        /// Only orders that failed in this phase.
        #[arg(long, value_enum)]
        phase: Option<PhaseArg>,
        /// Why (stored in each order's timeline).
        #[arg(long)]
        reason: String,
        /// Who (database only, as for retry).
        #[arg(long)]
        actor: Option<String>,
    },
    /// Retry a failed order (resumes the phase that failed; never buys when a server is owned).
    Retry {
        /// The order: id, order_ref or short id.
        id: String,
        /// Why (stored in the timeline).
        #[arg(long)]
        reason: String,
        /// Who (stored in the timeline; database only: through --api it is the token's name).
        #[arg(long)]
        actor: Option<String>,
    },
    /// Resolve an order that needs attention.
    Resolve {
        /// The order: id, order_ref or short id.
        id: String,
        /// adopt: the server at --ip is ours, continue to credentials; not-bought: nothing was
        /// bought, buy again; fail: give up.
        #[arg(long, value_enum)]
        action: ResolveAction,
        /// The server's address (adopt).
        #[arg(long)]
        ip: Option<String>,
        /// Adopt an address outside the order's package (say why in --reason).
        #[arg(long)]
        override_package_check: bool,
        /// Why (stored in the timeline).
        #[arg(long)]
        reason: String,
        /// Who (database only, as for retry).
        #[arg(long)]
        actor: Option<String>,
    },
    /// Ask for an action on a ready order's server: start, stop, reboot (stop then start),
    /// reinstall (format: a new password) or change-os --os IMAGE (a new password). Queued as
    /// durable work; `orders show` follows it.
    Action {
        /// Order id.
        id: String,
        /// start, stop, reboot, reinstall or change-os.
        action: String,
        /// For change-os: a changeos code or its name (2022, "Windows Server 2022", ubuntu, ...).
        #[arg(long)]
        os: Option<String>,
        /// Why (stored in the timeline).
        #[arg(long)]
        reason: String,
        /// Who (database only, as for retry).
        #[arg(long)]
        actor: Option<String>,
    },
    /// Cancel an order (refused while a purchase is in flight or unsettled).
    Cancel {
        /// The order: id, order_ref or short id.
        id: String,
        /// Why (stored in the timeline).
        #[arg(long)]
        reason: String,
        /// Who (database only, as for retry).
        #[arg(long)]
        actor: Option<String>,
    },
    /// Renew a ready order's server for a month (a running `serve` sends renewvps).
    Renew {
        /// Order id.
        id: String,
        /// Why (stored in the timeline).
        #[arg(long)]
        reason: String,
        /// Who (database only, as for retry).
        #[arg(long)]
        actor: Option<String>,
    },
    /// Cancel a ready order's service: it is not renewed and ends `terminated` at its expiry.
    CancelService {
        /// Order id.
        id: String,
        /// Why (stored in the timeline).
        #[arg(long)]
        reason: String,
        /// Who (database only, as for retry).
        #[arg(long)]
        actor: Option<String>,
    },
}

/// The phase of a failed order, for the failed-queue commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PhaseArg {
    /// Failed buying: no server was bought.
    Buy,
    /// Failed waiting for credentials: a server is owned.
    Credentials,
}

impl PhaseArg {
    /// The domain's phase.
    pub fn phase(self) -> crate::domain::Phase {
        match self {
            Self::Buy => crate::domain::Phase::Buy,
            Self::Credentials => crate::domain::Phase::Credentials,
        }
    }
}

/// `--speed`: a finite number from 1 to 100000 (0 or less would never finish; more than that
/// outruns the simulator's own timers).
fn parse_speed(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number; try --speed 60"))?;
    if !v.is_finite() || !(1.0..=100_000.0).contains(&v) {
        return Err(format!(
            "must be between 1 and 100000 simulated seconds per real second; got {s}"
        ));
    }
    Ok(v)
}

/// How `orders resolve` settles an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ResolveAction {
    /// The server at --ip is ours.
    Adopt,
    /// Nothing was bought.
    NotBought,
    /// Give up.
    Fail,
}

impl ResolveAction {
    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Adopt => "adopt",
            Self::NotBought => "not_bought",
            Self::Fail => "fail",
        }
    }
}

/// `catalog` subcommands.
#[derive(Debug, Subcommand)]
pub enum CatalogAction {
    /// Read SmartVPS's stock list into the catalog now.
    Sync,
    /// Show the catalog as last synced.
    List,
}

/// `bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Run the same fault schedules under on_unknown = retry and reconcile and compare.
    Strategies {
        /// Orders per fault profile and strategy.
        #[arg(long, default_value_t = 10_000)]
        orders: usize,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Leave out the renewal row (its simulation runs ~100 days per server and takes
        /// longer than the purchase runs).
        #[arg(long)]
        skip_renewals: bool,
        /// Run only these fault profiles (calm, flaky, hostile; repeat or separate with
        /// commas). All three when left out.
        #[arg(long, value_delimiter = ',')]
        profile: Vec<String>,
        /// The purchase horizon the runs use (policy.buy.horizon; default its default, 10m):
        /// shorter settles unknown outcomes sooner and counts more purchases past it.
        #[arg(long, value_parser = humantime::parse_duration)]
        horizon: Option<std::time::Duration>,
    },
    /// Orders per second through the whole pipeline on one database, against that database's
    /// raw commit rate; claim-to-commit latency; peak RSS; RSS of a serve process with orders
    /// waiting on timers.
    Throughput {
        /// Which database.
        #[arg(long, value_enum, default_value = "sqlite")]
        store: crate::tools::bench_throughput::StoreKind,
        /// Orders through the pipeline.
        #[arg(long, default_value_t = 10_000)]
        orders: usize,
        /// Concurrent workers.
        #[arg(long, default_value_t = 16)]
        workers: usize,
        /// PostgreSQL server to create the run's fresh databases on (they are dropped after);
        /// default postgres://postgres@127.0.0.1:5432/postgres.
        #[arg(long, env = "PROVISIONER_BENCH_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Orders a `provisioner serve` child holds waiting on timers for the RSS figure (0 skips).
        #[arg(long, default_value_t = 10_000)]
        waiting: usize,
        /// SQLite: the most writes one group commit takes (1: a transaction per write, as
        /// before group commit).
        #[arg(long, default_value_t = crate::store::sqlite::DEFAULT_GROUP_COMMIT)]
        group_commit: usize,
    },
}
