//! The command line: `serve`, `demo`, `plan`, `simulator`, `orders`, `bench`, `keygen`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, Settings};
use crate::domain::{OrderId, OrderState};
use crate::policy::plan;
use crate::telemetry::{self, LogFormat};

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
        /// How many simulated seconds pass per real second.
        #[arg(long, default_value_t = 60.0)]
        speed: f64,
    },
    /// Print the seed's total-time analysis for the configured policy.
    Plan {
        /// How long a successful buyVps takes.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        buy_latency: Duration,
        /// How long a successful status call takes.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        status_latency: Duration,
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
        /// Random seed for generated passwords and faults.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Inspect and act on orders in the configured database.
    Orders {
        /// What to do.
        #[command(subcommand)]
        action: OrdersAction,
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
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One order with its timeline and purchase ledger.
    Show {
        /// Order id.
        id: String,
    },
    /// Retry a failed order (resumes the phase that failed; never buys when a server is owned).
    Retry {
        /// Order id.
        id: String,
        /// Why (stored in the timeline).
        #[arg(long)]
        reason: String,
        /// Who (stored in the timeline).
        #[arg(long, default_value = "cli")]
        actor: String,
    },
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
    },
    /// Orders per second through the whole pipeline on one database, against that database's
    /// raw commit rate; claim-to-commit latency; peak RSS; RSS of a serve process with orders
    /// waiting on timers.
    Throughput {
        /// Which database.
        #[arg(long, value_enum, default_value = "sqlite")]
        store: crate::bench_throughput::StoreKind,
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
    },
}

/// Runs the CLI and returns the process exit code: 0 success, 1 failure, 2 configuration error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.command {
        // The demo and the benchmarks print their own progress; the engine's lines would repeat it.
        Command::Demo { .. } | Command::Bench { .. } => "error",
        Command::Plan { .. } | Command::Keygen => "warn",
        _ => "info",
    };
    telemetry::init(cli.log_format, level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            if let Some(config) = e.downcast_ref::<ConfigError>() {
                eprintln!("{config}");
                return ExitCode::from(2);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = || Settings::load(cli.config.as_deref());
    match cli.command {
        Command::Serve => {
            crate::app::serve(settings()?).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { speed } => crate::demo::run(speed).await,
        Command::Plan {
            buy_latency,
            status_latency,
        } => {
            let s = settings()?;
            let timings = plan::Timings {
                buy_success: buy_latency,
                status_success: status_latency,
            };
            let analysis = plan::analyse(&s.policy, &timings);
            print!("{}", plan::render(&s.policy, &timings, &analysis));
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulator {
            listen,
            username,
            password,
            path_prefix,
            seed,
        } => {
            crate::app::run_simulator(listen, username, password, path_prefix, seed).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Orders { action } => orders(settings()?, action).await,
        Command::Bench {
            which: BenchCommand::Strategies { orders, seed },
        } => {
            crate::bench::strategies(orders, seed).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            which:
                BenchCommand::Throughput {
                    store,
                    orders,
                    workers,
                    database_url,
                    waiting,
                },
        } => {
            let opts = crate::bench_throughput::Options {
                store,
                orders,
                workers,
                database_url,
                waiting,
            };
            crate::bench_throughput::run(opts).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen => {
            println!(
                "{}",
                secrecy::ExposeSecret::expose_secret(&crate::crypto::Cipher::generate_key())
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn orders(settings: Settings, action: OrdersAction) -> anyhow::Result<ExitCode> {
    let engine = crate::app::offline_engine(&settings).await?;
    let store = engine.store();
    match action {
        OrdersAction::List { state, limit } => {
            let state = state
                .map(|s| s.parse::<OrderState>())
                .transpose()
                .map_err(|e| anyhow::anyhow!("--state: {e}"))?;
            let filter = crate::store::OrderFilter {
                state,
                limit: Some(limit),
                ..Default::default()
            };
            println!(
                "{:<36}  {:<20}  {:<20}  {:>3}  {:>3}  {:<15}  CREATED",
                "ID", "REF", "STATE", "BUY", "STA", "SERVER"
            );
            for o in store.orders(&filter).await? {
                println!(
                    "{:<36}  {:<20}  {:<20}  {:>3}  {:>3}  {:<15}  {}",
                    o.id,
                    o.order_ref.as_str(),
                    o.state.as_str(),
                    o.buy_attempts,
                    o.status_attempts,
                    o.server_ip
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| "-".into()),
                    o.created_at
                );
            }
        }
        OrdersAction::Show { id } => {
            let id = OrderId::parse(&id).map_err(|e| anyhow::anyhow!("{e}"))?;
            let Some(o) = store.order(&id).await? else {
                eprintln!("no order {id}");
                return Ok(ExitCode::FAILURE);
            };
            let view = crate::web::OrderView::new(
                &o,
                Some(store.timeline(&id).await?),
                Some(store.purchases(&id).await?),
            );
            println!("{}", serde_json::to_string_pretty(&view)?);
        }
        OrdersAction::Retry { id, reason, actor } => {
            let id = OrderId::parse(&id).map_err(|e| anyhow::anyhow!("{e}"))?;
            let o = engine.retry(&id, &actor, &reason).await?;
            println!(
                "order {} is {} again; a running `provisioner serve` picks it up",
                o.id, o.state
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
