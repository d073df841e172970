//! `provisioner bench strategies`: the same fault schedules under `on_unknown = retry` (the seed
//! taken literally) and `reconcile`, side by side.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::policy::plan::format_total;
use crate::policy::{OnUnknown, RetryPolicy};
use crate::simulator::FaultProfile;
use crate::tools::chaos::{SimulationConfig, SimulationReport, run_virtual};

/// Runs the comparison and prints a Markdown table.
///
/// # Errors
/// When a run under `reconcile` broke a promise (the table is still printed).
pub async fn strategies(
    orders: usize,
    seed: u64,
    renewals: bool,
    only: &[String],
    horizon: Option<Duration>,
) -> anyhow::Result<()> {
    let defaults = RetryPolicy::default();
    let horizon = horizon.unwrap_or(defaults.horizon);
    RetryPolicy {
        horizon,
        ..defaults
    }
    .validate_horizon()
    .map_err(|why| anyhow::anyhow!("--horizon {why}"))?;
    let mut profiles = vec!["calm", "flaky", "hostile"];
    if !only.is_empty() {
        for name in only {
            if FaultProfile::named(name).is_none() {
                anyhow::bail!("unknown fault profile {name:?} (calm, flaky, hostile)");
            }
        }
        profiles.retain(|p| only.iter().any(|o| o.trim().eq_ignore_ascii_case(p)));
    }
    println!(
        "bench strategies: {orders} orders per run, seed {seed}, horizon {}, 3 workers, 2% of steps crash mid-step, virtual time\n",
        humantime::format_duration(horizon)
    );
    println!(
        "| profile | strategy | orders | duplicate purchases | second server after the horizon | auto-resolved: late reply | auto-resolved: scan \
         | needs_attention (nothing bought) | orphans | failed | ready | p50 to ready | p95 to ready | upstream calls/order | wall time |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut broken = Vec::new();
    let mut causes = Vec::new();
    for name in profiles {
        let profile = FaultProfile::named(name).unwrap_or_default();
        // The seed literally, the default, and the default under an operator's short waits
        // (10 s, 20 s: well inside the purchase horizon, which must still hold every verdict).
        for (strategy, short) in [
            (OnUnknown::Retry, false),
            (OnUnknown::Reconcile, false),
            (OnUnknown::Reconcile, true),
        ] {
            let mut policy = RetryPolicy {
                on_unknown: strategy,
                horizon,
                ..RetryPolicy::default()
            };
            if short {
                policy.buy.delays = vec![Duration::from_secs(10), Duration::from_secs(20)];
            }
            let label = if short {
                format!("{strategy}, waits 10 s / 20 s")
            } else {
                strategy.to_string()
            };
            let cfg = SimulationConfig::new(seed, orders, profile.clone(), policy);
            let started = Instant::now();
            // The simulation needs its own paused-time runtime; keep it off this runtime's threads.
            let report: SimulationReport =
                tokio::task::spawn_blocking(move || run_virtual(&cfg)).await?;
            let wall = started.elapsed();
            let q = |p| {
                report
                    .time_to_ready_quantile(p)
                    .map(|d| {
                        format_total(std::time::Duration::from_secs(
                            d.as_secs_f64().round() as u64
                        ))
                    })
                    .unwrap_or_else(|| "-".into())
            };
            println!(
                "| {name} | {label} | {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {:.2} | {:.1}s |",
                report.orders,
                report.duplicates,
                report.beyond_horizon,
                report.by_late_reply,
                report.by_scan,
                report.needs_attention,
                report.false_alarms,
                report.orphans,
                report.failed,
                report.ready,
                q(0.5),
                q(0.95),
                report.calls_per_order(),
                wall.as_secs_f64()
            );
            if strategy == OnUnknown::Reconcile && !short {
                causes.push((name, report.orders, report.attention_causes.clone()));
            }
            if strategy == OnUnknown::Reconcile
                && (!report.violations.is_empty() || report.duplicates > 0)
            {
                broken.push(format!("{name}: {}", report.violations.join("; ")));
            }
        }
    }
    print_causes(&causes);
    let renewal = if renewals {
        renewal_row(orders, seed).await?
    } else {
        String::new()
    };
    if !renewal.is_empty() {
        broken.push(renewal);
    }
    if broken.is_empty() {
        println!(
            "\nreconcile kept every promise in every profile (zero duplicates, no order lost or stuck)."
        );
        Ok(())
    } else {
        anyhow::bail!("promises broken under reconcile:\n{}", broken.join("\n"))
    }
}

/// Why orders went to an admin under `reconcile`, by cause and profile (share of orders).
fn print_causes(runs: &[(&str, usize, BTreeMap<&'static str, usize>)]) {
    let mut names: Vec<&str> = runs.iter().flat_map(|r| r.2.keys().copied()).collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return;
    }
    let header: Vec<&str> = runs.iter().map(|r| r.0).collect();
    println!(
        "\n| needs_attention under reconcile, by cause | {} |",
        header.join(" | ")
    );
    println!("|---|{}", "---:|".repeat(runs.len()));
    for name in names {
        let cells: Vec<String> = runs
            .iter()
            .map(|(_, orders, causes)| {
                let n = causes.get(name).copied().unwrap_or(0);
                #[allow(clippy::cast_precision_loss)]
                let share = n as f64 * 100.0 / (*orders).max(1) as f64;
                format!("{n} ({share:.2} %)")
            })
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
}

/// The renewal row: `servers` ready servers over ~100 simulated days with renewvps and status
/// faults and crashes (see [`crate::tools::chaos::renewals`]). Returns the broken promises.
async fn renewal_row(servers: usize, seed: u64) -> anyhow::Result<String> {
    use crate::tools::chaos::renewals::{RenewalConfig, run_virtual};
    let cfg = RenewalConfig::new(seed, servers);
    let started = Instant::now();
    let r = tokio::task::spawn_blocking(move || run_virtual(&cfg)).await?;
    println!(
        "\n| renewals | servers | paid | replays | applied upstream | given up (definite refusals, admins alerted) | refused after a lapse \
         | renewvps calls/renewal | violations | wall time |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    #[allow(clippy::cast_precision_loss)]
    let per = r.calls as f64 / f64::from(r.paid.max(1));
    println!(
        "| ledger + ExpiryDate settlement | {} | {} | {} | {} | {} | {} | {per:.2} | {} | {:.1}s |",
        r.servers,
        r.paid,
        r.replays,
        r.applied,
        r.given_up,
        r.refused_after_lapse,
        r.violations.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(if r.violations.is_empty() {
        String::new()
    } else {
        format!("renewals: {}", r.violations.join("; "))
    })
}
