//! Logging: the seed's human-readable lines by default, JSON lines with `--log-format json`.
//! Every line about an order carries its `order_id` field.
//!
//! Metrics: [`metrics()`] installs the Prometheus recorder that `GET /metrics` renders; the
//! instrumented code calls the `metrics` macros where things happen.

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. `default_level` applies unless `RUST_LOG` says otherwise.
/// Calling it twice is harmless (the second call does nothing).
pub fn init(format: LogFormat, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{default_level},sqlx=warn,hyper=warn,reqwest=warn"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Logs go to stderr: stdout is for command output (`plan`, `orders list`, the demo table).
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: a log file or journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Histogram buckets, per metric, in the metric's unit.
const BUCKETS: &[(&str, &[f64])] = &[
    // One upstream call: the simulator answers in milliseconds, SmartVPS can take minutes.
    (
        "provisioner_upstream_call_duration_seconds",
        &[
            0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        ],
    ),
    // Seed cases: 40 s best, about 7 and 16 minutes moderate and worst.
    (
        "provisioner_time_to_ready_seconds",
        &[
            30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 3600.0, 7200.0,
        ],
    ),
    (
        "provisioner_attempts_until_success",
        &[1.0, 2.0, 3.0, 4.0, 5.0, 10.0],
    ),
];

/// The process's Prometheus recorder, installed as the global `metrics` recorder on first use.
/// Every service in the process shares it (tests start several), so counters are per process.
pub fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let mut builder = metrics_exporter_prometheus::PrometheusBuilder::new();
        for (name, buckets) in BUCKETS {
            builder = builder
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full((*name).to_string()),
                    buckets,
                )
                .expect("bucket lists are non-empty");
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Err: another recorder was installed first (an embedding program's); ours then stays
        // empty, which `/metrics` makes visible rather than failing start-up.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed: /metrics will be empty");
        }
        describe_metrics();
        handle.clone()
    })
}

/// HELP text for every metric (promtool wants one per family).
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "provisioner_upstream_calls_total",
        "SmartVPS calls by operation (ipstock, buyvps, status, start, stop, format, changeos, renewvps) and outcome (succeeded, rejected, unknown)."
    );
    describe_histogram!(
        "provisioner_upstream_call_duration_seconds",
        "Duration of SmartVPS calls by operation, in the engine's clock time."
    );
    // Upstream health (issue 15): from this process's own SmartVPS calls.
    describe_gauge!(
        "provisioner_upstream_up",
        "1 while this process's last SmartVPS call got an answer, 0 while SmartVPS is unreachable, failing or refusing our login."
    );
    describe_gauge!(
        "provisioner_upstream_last_success_timestamp_seconds",
        "Unix time of the last successful SmartVPS call by operation (ipstock, buyvps, status)."
    );
    // Server actions (from main): promtool refuses a family without help text.
    describe_counter!(
        "provisioner_server_action_calls_total",
        "SmartVPS server-action calls (start, stop, format, changeos, renewvps) by operation and outcome."
    );
    describe_counter!(
        "provisioner_server_actions_total",
        "Server actions finished, by kind and result (done, failed)."
    );
    describe_histogram!(
        "provisioner_attempts_until_success",
        "The attempt number on which a phase succeeded (buy: buyvps, credentials: status)."
    );
    describe_histogram!(
        "provisioner_time_to_ready_seconds",
        "Time from intake to ready, per order, in the engine's clock time."
    );
    describe_counter!(
        "provisioner_server_action_calls_total",
        "Calls of server actions (start, stop, format, changeos) by operation and outcome (succeeded, rejected, unknown)."
    );
    describe_counter!(
        "provisioner_server_actions_total",
        "Server actions ended, by kind (start, stop, reboot, reinstall, change_os) and result (done, failed)."
    );
    describe_counter!(
        "provisioner_purchases_total",
        "buyvps calls recorded in the purchase ledger, by outcome (succeeded, rejected, unknown)."
    );
    describe_counter!(
        "provisioner_unknown_outcomes_total",
        "Purchases whose outcome is unknown (timeout, reset, 5xx, a worker lost mid-call)."
    );
    describe_counter!(
        "provisioner_reconciliations_total",
        "Unknown purchases settled, by result (not_bought, adopted: a late reply, discovered: a scan, escalated)."
    );
    describe_counter!(
        "provisioner_late_replies_total",
        "buyvps replies heard after the attempt's timeout on the connection kept open, by outcome."
    );
    describe_counter!(
        "provisioner_discovery_scans_total",
        "Scans of a package for the server an unknown purchase bought, by result (adopted, ambiguous, none, too_wide)."
    );
    describe_counter!(
        "provisioner_discovery_calls_total",
        "status calls made by discovery scans: the cost of asking SmartVPS before asking an admin."
    );
    describe_gauge!(
        "provisioner_orders",
        "Orders by state, read from the store at scrape time."
    );
    describe_gauge!(
        "provisioner_http_connections",
        "Inbound HTTP connections open now (at most server.max_connections)."
    );
    describe_counter!(
        "provisioner_http_connections_refused_total",
        "Connections closed on arrival because their client address already held server.max_connections_per_client."
    );
    describe_counter!(
        "provisioner_auth_failures_total",
        "Failed authentications (admin token, dashboard login, customer token, storefront signature)."
    );
    describe_counter!(
        "provisioner_auth_throttled_total",
        "Requests refused with 429 because their address failed authentication too often."
    );
    describe_gauge!(
        "provisioner_outbox_backlog",
        "Notices not yet fanned out plus deliveries neither delivered nor abandoned."
    );
    // issue 15: what alerts need beyond counts (docs/alerts.yml).
    describe_gauge!(
        "provisioner_oldest_overdue_seconds",
        "Seconds the most overdue active order is past its run_at (0 when none is late): a stuck worker or queue."
    );
    describe_gauge!(
        "provisioner_package_free",
        "Free addresses per package (package, name) at the last catalog sync; read from the store at scrape time."
    );
    describe_gauge!(
        "provisioner_package_low_stock_threshold",
        "catalog.low_stock: a sold package with this many free addresses or fewer is low on stock."
    );
    describe_counter!(
        "provisioner_notifications_total",
        "Notification delivery attempts by channel, event and outcome (delivered, failed, abandoned)."
    );
    describe_gauge!(
        "provisioner_servers_expiring_soon",
        "Ready servers whose last known ExpiryDate falls within policy.renew.remind_before (set by the expiry sweep)."
    );
    describe_counter!(
        "provisioner_renewals_total",
        "Renewals ended, by result (done: the expiry moved or SmartVPS confirmed; failed: given up, admins alerted)."
    );
    describe_counter!(
        "provisioner_renewal_calls_total",
        "renewvps calls by outcome (succeeded, rejected, unknown: settled by reading ExpiryDate)."
    );
    describe_counter!(
        "provisioner_servers_lapsed_total",
        "Servers that reached their expiry unrenewed, by the order's new state (expired, terminated)."
    );
}

/// An error and its sources as one line, skipping a source that repeats its parent's text.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}
