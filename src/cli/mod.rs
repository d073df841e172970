//! The command line: `serve`, `demo`, `plan`, `simulator`, `orders`, `catalog`, `bench`,
//! `keygen`. [`args`] holds the command types, this module dispatches them, and [`operator`]
//! runs the operator's `orders` and `catalog` commands.

mod args;
pub mod operator;

use std::process::ExitCode;

use clap::Parser;

pub use args::{BenchCommand, CatalogAction, Cli, Command, OrdersAction, ResolveAction};

use crate::config::{ConfigError, Settings};
use crate::policy::plan;
use crate::telemetry;
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
    // One TLS stack for every HTTP client in the process (rustls with ring).
    crate::provider::smartvps::install_crypto_provider();
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
        Command::Demo { speed } => crate::tools::demo::run(speed).await,
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
            profile,
        } => {
            let faults = crate::simulator::FaultProfile::named(&profile)
                .filter(|_| profile != "none")
                .map(|p| (profile.clone(), p));
            crate::app::run_simulator(listen, username, password, path_prefix, seed, faults)
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Orders { api, token, action } => match api {
            Some(url) => {
                let token = token.ok_or_else(|| {
                    anyhow::anyhow!(
                        "--api needs an admin token: --token or PROVISIONER_ADMIN_TOKEN"
                    )
                })?;
                crate::cli::operator::run(
                    crate::cli::operator::Backend::api(&url, secrecy::SecretString::from(token))?,
                    action,
                )
                .await
            }
            None => {
                let s = settings()?;
                let admin = crate::app::offline_admin(&s).await?;
                crate::cli::operator::run(crate::cli::operator::Backend::Database(admin), action)
                    .await
            }
        },
        Command::Catalog { action } => {
            let s = settings()?;
            let catalog = crate::app::offline_catalog(&s).await?;
            crate::cli::operator::catalog(&catalog, action).await
        }
        Command::Bench {
            which: BenchCommand::Strategies { orders, seed },
        } => {
            #[cfg(feature = "bench")]
            {
                crate::tools::bench_strategies::strategies(orders, seed).await?;
                Ok(ExitCode::SUCCESS)
            }
            #[cfg(not(feature = "bench"))]
            {
                let _ = (orders, seed);
                anyhow::bail!(
                    "`bench strategies` runs on virtual time, which this build leaves out; \
                     rebuild with `cargo run --release --features bench -- bench strategies`"
                )
            }
        }
        Command::Bench {
            which:
                BenchCommand::Throughput {
                    store,
                    orders,
                    workers,
                    database_url,
                    waiting,
                    group_commit,
                },
        } => {
            let opts = crate::tools::bench_throughput::Options {
                store,
                orders,
                workers,
                database_url,
                waiting,
                group_commit,
            };
            crate::tools::bench_throughput::run(opts).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_takes_api_and_token_before_or_after_the_action() {
        for args in [
            &[
                "provisioner",
                "orders",
                "--api",
                "http://x:1",
                "--token",
                "t",
                "list",
                "--state",
                "failed",
            ][..],
            &[
                "provisioner",
                "orders",
                "list",
                "--state",
                "failed",
                "--api",
                "http://x:1",
                "--token",
                "t",
            ][..],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            let Command::Orders { api, token, action } = cli.command else {
                panic!("{args:?}")
            };
            assert_eq!(api.as_deref(), Some("http://x:1"));
            assert_eq!(token.as_deref(), Some("t"));
            assert!(matches!(action, OrdersAction::List { state: Some(s), .. } if s == "failed"));
        }
        let cli = Cli::try_parse_from([
            "provisioner",
            "orders",
            "resolve",
            "0196a0e0-0000-7000-8000-000000000000",
            "--action",
            "not-bought",
            "--reason",
            "checked the panel",
        ])
        .unwrap();
        let Command::Orders {
            action: OrdersAction::Resolve { action, .. },
            ..
        } = cli.command
        else {
            panic!()
        };
        assert_eq!(action.as_str(), "not_bought");
        assert!(
            Cli::try_parse_from(["provisioner", "orders", "retry", "x"]).is_err(),
            "a reason is required"
        );
        assert!(Cli::try_parse_from(["provisioner", "catalog", "sync"]).is_ok());
    }
}
