//! The command line: `serve`, `demo`, `plan`, `simulator`, `orders`, `catalog`, `bench`,
//! `keygen`. [`args`] holds the command types, this module dispatches them, and [`operator`]
//! runs the operator's `orders` and `catalog` commands.

mod args;
pub mod operator;

use std::process::ExitCode;

use clap::Parser;

pub use args::{BenchCommand, CatalogAction, Cli, Command, OrdersAction, PhaseArg, ResolveAction};

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
        Command::Demo { speed, keep } => {
            if let Some(path) = &cli.config {
                anyhow::bail!(
                    "demo runs on built-in settings (simulator, a fresh SQLite file, the seed's policy) and reads no \
                     config file; drop --config {} (use `provisioner serve --config ...` for your own settings)",
                    path.display()
                );
            }
            crate::tools::demo::run(speed, keep).await
        }
        Command::Plan {
            buy_latency,
            status_latency,
            install_time,
            json,
        } => {
            let s = settings()?;
            let timings = plan::Timings {
                buy_success: buy_latency,
                status_success: status_latency,
                install: install_time,
            };
            let analysis = plan::analyse(&s.policy, &timings);
            let v = plan_json(&s.policy, &analysis);
            crate::cli::operator::print(json, &v, || plan::render(&s.policy, &timings, &analysis));
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
            // A fixed seed repeats the same addresses and passwords on every start, which a
            // restarted simulator must not hand out again: seed from the clock unless asked.
            let seed = seed.unwrap_or_else(crate::app::clock_seed);
            let faults = crate::simulator::FaultProfile::named(&profile)
                .filter(|_| profile != "none")
                .map(|p| (profile.clone(), p));
            crate::app::run_simulator(listen, username, password, path_prefix, seed, faults)
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Orders {
            api,
            token,
            json,
            action,
        } => match api {
            Some(url) => {
                let token = token.ok_or_else(|| {
                    anyhow::anyhow!(
                        "--api needs an admin token: --token or PROVISIONER_ADMIN_TOKEN"
                    )
                })?;
                crate::cli::operator::run(
                    crate::cli::operator::Backend::api(&url, secrecy::SecretString::from(token))?,
                    action,
                    json,
                )
                .await
            }
            None => {
                let s = settings()?;
                existing_database(&s)?;
                let admin = crate::app::offline_admin(&s).await?;
                crate::cli::operator::run(
                    crate::cli::operator::Backend::Database(admin),
                    action,
                    json,
                )
                .await
            }
        },
        Command::Catalog { json, action } => {
            let s = settings()?;
            existing_database(&s)?;
            let catalog = crate::app::offline_catalog(&s).await?;
            crate::cli::operator::catalog(&catalog, action, json).await
        }
        Command::Bench {
            which:
                BenchCommand::Strategies {
                    orders,
                    seed,
                    skip_renewals,
                    profile,
                    horizon,
                },
        } => {
            #[cfg(feature = "bench")]
            {
                crate::tools::bench_strategies::strategies(
                    orders,
                    seed,
                    !skip_renewals,
                    &profile,
                    horizon,
                )
                .await?;
                Ok(ExitCode::SUCCESS)
            }
            #[cfg(not(feature = "bench"))]
            {
                let _ = (orders, seed, skip_renewals, profile, horizon);
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

/// `plan --json`: the policy and each case's steps and total, durations in seconds.
fn plan_json(
    policy: &crate::policy::RetryPolicy,
    cases: &[plan::CaseTimeline],
) -> serde_json::Value {
    let cases: Vec<serde_json::Value> = cases
        .iter()
        .map(|c| {
            serde_json::json!({
                "case": c.case.name(),
                "total_seconds": c.total.as_secs_f64(),
                "total": plan::format_total(c.total),
                "outcome": c.outcome,
                "steps": c.steps.iter().map(|s| serde_json::json!({
                    "at_seconds": s.at.as_secs_f64(),
                    "label": s.label,
                    "took_seconds": s.took.as_secs_f64(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({ "policy": policy.to_string(), "cases": cases })
}

/// The operator commands read an existing database: with no config file and no
/// `PROVISIONER_DATABASE_URL`, the default `./provisioner.db` is used only when it exists, rather
/// than created empty (which would answer "no orders" about the wrong database).
fn existing_database(s: &Settings) -> anyhow::Result<()> {
    let defaulted = s.source.is_none() && s.database.key == "database.url";
    let Some(file) = s
        .database
        .url
        .strip_prefix("sqlite://")
        .or_else(|| s.database.url.strip_prefix("sqlite:"))
        .map(|rest| rest.split('?').next().unwrap_or_default().to_string())
    else {
        return Ok(());
    };
    if defaulted && !std::path::Path::new(&file).exists() {
        anyhow::bail!(
            "no database to read: no config file was found (./provisioner.toml) and {file} does not exist here. \
             Point at the service's database with --config PATH (its [database] url) or \
             PROVISIONER_DATABASE_URL=sqlite:///path/to/provisioner.db, or ask a running service with --api URL"
        );
    }
    Ok(())
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
            let Command::Orders {
                api, token, action, ..
            } = cli.command
            else {
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

    #[test]
    fn a_standalone_simulator_is_seeded_from_the_clock_unless_told() {
        let seed = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Command::Simulator { seed, .. } => seed,
            _ => panic!(),
        };
        assert_eq!(seed(&["provisioner", "simulator"]), None);
        assert_eq!(seed(&["provisioner", "simulator", "--seed", "5"]), Some(5));
        let a = crate::app::clock_seed();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_ne!(a, crate::app::clock_seed(), "two starts, two seeds");
    }
}
