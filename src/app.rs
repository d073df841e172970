//! Wiring: builds the ports from settings once, at start-up, and runs the API, the worker and
//! the notice dispatcher until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::config::{ConfigError, Settings};
use crate::crypto::Cipher;
use crate::engine::Engine;
use crate::engine::admin::AdminService;
use crate::engine::catalog::Catalog;
use crate::notify::email::EmailNotifier;
use crate::notify::webhook::WebhookNotifier;
use crate::notify::{Channels, Dispatcher, DispatcherSettings, LogNotifier, Notifier};
use crate::provider::Provider;
use crate::provider::health::{UpstreamHealth, Watched};
use crate::provider::metered::MeteredProvider;
use crate::provider::smartvps::{SmartVpsClient, SmartVpsConfig};
use crate::redact::{self, User};
use crate::simulator::{self, HttpConfig, Simulator};
use crate::store::Store;

/// The credentials the built-in simulator accepts (it is local and holds nothing of value).
const BUILTIN_USER: &str = "builtin";
const BUILTIN_PASSWORD: &str = "builtin-simulator";

/// A running service: API, worker and dispatcher (and the built-in simulator when used).
pub struct Running {
    /// Where the API listens.
    pub addr: SocketAddr,
    /// The engine.
    pub engine: Arc<Engine>,
    /// The notice dispatcher (also running in the background).
    pub dispatcher: Arc<Dispatcher>,
    /// The simulator, when SmartVPS is simulated.
    pub simulator: Option<Simulator>,
    /// Where the simulator listens, when it does.
    pub simulator_addr: Option<SocketAddr>,
    /// SmartVPS's health as this process's calls found it.
    pub health: Arc<UpstreamHealth>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops claiming work, lets in-flight steps finish (or releases their leases), stops the API.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// What `start` should use besides the settings.
#[derive(Default)]
pub struct StartOptions {
    /// A simulator prepared by the caller (demo, tests); otherwise a default one is built when
    /// no `smartvps.base_url` is configured.
    pub simulator: Option<Simulator>,
    /// An extra channel besides the configured webhooks and email (tests). With neither, notices
    /// go to the log.
    pub notifier: Option<Arc<dyn Notifier>>,
}

/// The credentials cipher: from `PROVISIONER_SECRET_KEY`, or on the built-in simulator a fresh
/// key for this run.
///
/// # Errors
/// A [`ConfigError`] when a real SmartVPS is configured without a key, or the key is malformed.
pub fn cipher(settings: &Settings) -> Result<Cipher, ConfigError> {
    match (&settings.secret_key, &settings.smartvps) {
        (Some(key), _) => Cipher::from_hex(key)
            .map_err(|e| ConfigError::new("PROVISIONER_SECRET_KEY", e.to_string())),
        (None, Some(_)) => Err(ConfigError::new(
            "PROVISIONER_SECRET_KEY",
            "required with a real SmartVPS: customer passwords are encrypted at rest with it (generate one with `provisioner keygen`)",
        )),
        (None, None) => {
            tracing::warn!(
                "no PROVISIONER_SECRET_KEY: generated a key for this run (built-in simulator only); credentials stored now cannot be \
                 decrypted after a restart"
            );
            Cipher::from_hex(&Cipher::generate_key())
                .map_err(|e| ConfigError::new("PROVISIONER_SECRET_KEY", e.to_string()))
        }
    }
}

/// The store the URL's scheme names: SQLite for one process, PostgreSQL for several processes
/// sharing one database (see `docs/deployment.md`).
///
/// What the settings alone cannot tell is checked here and reported as a [`ConfigError`] on the
/// key the URL came from (exit code 2): a SQLite file whose directory does not exist, a
/// PostgreSQL server that cannot be reached or refuses us.
async fn store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    let db = &settings.database;
    let shown = redact::url(&db.url, User::Shown);
    if let Some(dir) = crate::config::sqlite_directory(&db.url)
        && !dir.is_dir()
    {
        return Err(ConfigError::new(
            &db.key,
            format!(
                "the directory {} of the SQLite database does not exist; create it or name another file",
                dir.display()
            ),
        )
        .into());
    }
    let store = match crate::store::open(&db.url).await {
        Ok(store) => store,
        Err(e) if crate::store::Backend::of(&db.url) == Some(crate::store::Backend::Postgres) => {
            return Err(ConfigError::new(
                &db.key,
                format!("cannot open PostgreSQL database {shown}: {e}"),
            )
            .into());
        }
        Err(e) => {
            return Err(ConfigError::new(
                &db.key,
                format!("cannot open SQLite database {shown}: {e}"),
            )
            .into());
        }
    };
    tracing::info!(database = %shown, "database ready");
    Ok(store)
}

/// The configured notification channels (webhooks, then email), plus `extra`; the log when there
/// are none.
///
/// # Errors
/// When a channel's client cannot be built.
pub fn channels(
    settings: &Settings,
    clock: &Arc<dyn Clock>,
    extra: Option<Arc<dyn Notifier>>,
) -> anyhow::Result<Channels> {
    let notify = &settings.notify;
    let mut out: Vec<Arc<dyn Notifier>> = Vec::new();
    for endpoint in &notify.webhooks {
        let hook = WebhookNotifier::new(endpoint.clone(), notify.timeout, Arc::clone(clock))
            .with_context(|| format!("webhook {}", endpoint.name))?;
        out.push(Arc::new(hook));
    }
    if let Some(email) = &notify.email {
        out.extend(EmailNotifier::channels(email).context("email")?);
    }
    out.extend(extra);
    if out.is_empty() {
        tracing::warn!(
            "no webhook or email configured ([notify] in the config): customer notices and admin alerts are only written to the log"
        );
        out.push(Arc::new(LogNotifier));
    } else if !out
        .iter()
        .any(|c| c.accepts(crate::domain::NoticeKind::AdminFailed))
    {
        tracing::warn!(
            "no admin channel (notify.email.admin_to, or a webhook taking admin.alert): failed orders alert nobody but the log"
        );
    }
    let names: Vec<&str> = out.iter().map(|c| c.channel()).collect();
    tracing::info!(channels = ?names, "notification channels");
    Ok(out.into())
}

fn dispatcher_settings(settings: &Settings) -> DispatcherSettings {
    let n = &settings.notify;
    DispatcherSettings {
        max_attempts: n.max_attempts,
        backoff_base: n.backoff_base,
        backoff_cap: n.backoff_cap,
        // Past the channels' own timeouts, which bound each step of a send.
        send_timeout: n.timeout * 3,
        ..DispatcherSettings::default()
    }
}

fn client(
    base_url: &str,
    path_prefix: &str,
    username: &str,
    password: SecretString,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Arc<dyn Provider>> {
    let cfg = SmartVpsConfig {
        base_url: base_url.to_string(),
        path_prefix: path_prefix.to_string(),
        username: username.to_string(),
        password,
    };
    Ok(Arc::new(
        SmartVpsClient::new(cfg, clock).context("building the SmartVPS client")?,
    ))
}

/// Starts the service: binds the API, starts the simulator when SmartVPS is simulated, the
/// worker and the dispatcher.
///
/// # Errors
/// Configuration, database or bind failures.
pub async fn start(
    settings: &Settings,
    clock: Arc<dyn Clock>,
    options: StartOptions,
) -> anyhow::Result<Running> {
    // The store first: what is wrong with the database is a config error, reported before
    // anything else is logged.
    let store = store(settings).await?;
    let cipher = Arc::new(cipher(settings)?);
    // The API's address next, before any task starts: a port taken or an address this machine
    // does not have is a config error on the key that named it, not a half-started service.
    let listener = TcpListener::bind(settings.server.listen)
        .await
        .map_err(|e| {
            ConfigError::new(
                "server.listen",
                format!(
                    "cannot listen on {} (set by server.listen or PROVISIONER_LISTEN): {e}",
                    settings.server.listen
                ),
            )
        })?;
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    let (provider, simulator, simulator_addr) = match &settings.smartvps {
        Some(s) => {
            tracing::info!(base_url = %s.base_url, path_prefix = %s.path_prefix, "using SmartVPS at {}", s.base_url);
            (
                client(
                    &s.base_url,
                    &s.path_prefix,
                    &s.username,
                    s.password.clone(),
                    Arc::clone(&clock),
                )?,
                None,
                None,
            )
        }
        None => {
            let sim = options
                .simulator
                // Seeded from the clock: a restarted `serve` keeps its database, and a simulator
                // that handed out the same addresses again would hand out owned servers.
                .unwrap_or_else(|| {
                    Simulator::with_default_catalog(Arc::clone(&clock), clock_seed())
                });
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding the built-in simulator")?;
            let addr = listener.local_addr()?;
            let cfg = HttpConfig::new(BUILTIN_USER, BUILTIN_PASSWORD);
            let (s, token) = (sim.clone(), shutdown.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = simulator::serve(s, listener, cfg, token).await {
                    tracing::error!("built-in simulator stopped: {e}");
                }
            }));
            tracing::warn!(
                "no smartvps.base_url configured: using the BUILT-IN SIMULATOR at http://{addr}/ (no real servers are bought). Set \
                 smartvps.base_url, SMARTVPS_USERNAME and SMARTVPS_PASSWORD to use SmartVPS."
            );
            let base = format!("http://{addr}/");
            let provider = client(
                &base,
                crate::config::DEFAULT_PATH_PREFIX,
                BUILTIN_USER,
                SecretString::from(BUILTIN_PASSWORD),
                Arc::clone(&clock),
            )?;
            (provider, Some(sim), Some(addr))
        }
    };
    let under = settings.policy.waits_under_horizon();
    if settings.policy.on_unknown == crate::policy::OnUnknown::Reconcile && !under.is_empty() {
        let waits: Vec<String> = under
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        tracing::info!(
            "policy.buy.delays ({}) end before policy.buy.horizon ({}): they apply after definite failures; after a \
             purchase whose outcome is unknown the engine listens for the late reply and reaches no \"nothing was bought\" \
             verdict until the horizon has passed since it was sent (`provisioner plan` shows the totals)",
            waits.join(", "),
            humantime::format_duration(settings.policy.horizon)
        );
    }
    // Installed before the first call is counted.
    let metrics = crate::telemetry::metrics();
    let token = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        // Drains histogram samples even when nobody scrapes, so they cannot pile up.
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(std::time::Duration::from_secs(5)) => metrics.run_upkeep(),
            }
        }
    }));
    tasks.push(tokio::spawn(crate::store::maintain_until(
        Arc::clone(&store),
        shutdown.clone(),
    )));
    let provider: Arc<dyn Provider> = Arc::new(MeteredProvider::new(provider, Arc::clone(&clock)));
    // Every call the engine and the catalog make is recorded for /healthz, /metrics and the
    // dashboard's outage banner, and its failure put in plain words.
    let health = Arc::new(UpstreamHealth::new());
    let provider: Arc<dyn Provider> = Arc::new(Watched::new(
        provider,
        Arc::clone(&clock),
        Arc::clone(&health),
    ));
    let catalog = Arc::new(Catalog::new(
        Arc::clone(&store),
        Arc::clone(&provider),
        Arc::clone(&clock),
        settings.policy.buy.timeout,
        settings.catalog.low_stock,
    ));
    let engine = Arc::new(Engine::new(
        Arc::clone(&store),
        provider,
        Arc::clone(&clock),
        settings.policy.clone(),
        Arc::clone(&cipher),
        settings.worker.engine.clone(),
    ));

    let (sync, token, every) = (
        Arc::clone(&catalog),
        shutdown.clone(),
        settings.catalog.sync_interval,
    );
    tasks.push(tokio::spawn(async move { sync.run(token, every).await }));

    let channels = channels(settings, &clock, options.notifier)?;
    let dispatcher = Arc::new(
        Dispatcher::new(
            Arc::clone(&store),
            channels,
            cipher,
            Arc::clone(&clock),
            dispatcher_settings(settings),
        )
        .with_templates(settings.notify.templates.clone()),
    );
    let (d, token) = (Arc::clone(&dispatcher), shutdown.clone());
    let interval = settings.worker.engine.poll_interval;
    tasks.push(tokio::spawn(async move { d.run(token, interval).await }));

    let (worker, token, grace) = (
        Arc::clone(&engine),
        shutdown.clone(),
        settings.worker.shutdown_grace,
    );
    tasks.push(tokio::spawn(async move { worker.run(token, grace).await }));

    let addr = listener.local_addr()?;
    let auth = Arc::new(crate::web::auth::AdminAuth::new(&settings.admin.tokens));
    if auth.enabled() {
        let names: Vec<&str> = settings
            .admin
            .tokens
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        tracing::info!(admins = ?names, "admin API and dashboard at http://{addr}/admin");
    } else {
        tracing::warn!(
            "no admin tokens configured: the admin API and the dashboard refuse every request. Set \
             PROVISIONER_ADMIN_TOKENS=\"name:TOKEN\" (a token from `provisioner keygen`)"
        );
    }
    let storefronts = Arc::new(crate::web::storefront::StorefrontAuth::new(
        &settings.storefronts,
    ));
    if storefronts.enabled() {
        let names: Vec<&str> = settings
            .storefronts
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        tracing::info!(storefronts = ?names, "intake open to signed requests of these storefronts");
    } else {
        tracing::warn!(
            "no storefronts configured: intake (POST /api/v1/orders) refuses every order. Set \
             PROVISIONER_STOREFRONTS=\"shop:SECRET\" (a secret from `provisioner keygen`) or [[storefronts]]"
        );
    }
    let server = &settings.server;
    let reserved = crate::web::server::reserved_fds(settings.worker.engine.concurrency);
    let fd_limit = crate::web::server::open_files_limit();
    let mut limits = crate::web::server::Limits::of(server);
    limits.max_connections =
        crate::web::server::effective_max_connections(server.max_connections, fd_limit, reserved);
    if limits.max_connections < server.max_connections {
        tracing::warn!(
            configured = server.max_connections,
            serving = limits.max_connections,
            open_files_limit = fd_limit,
            reserved,
            "server.max_connections lowered so that {reserved} file descriptors stay free for SmartVPS, database and \
             notice calls; raise the process's open-files limit (ulimit -n) to serve more"
        );
    }
    let app = crate::web::router(crate::web::AppState {
        engine: Arc::clone(&engine),
        catalog,
        health: Arc::clone(&health),
        auth,
        storefronts,
        throttle: Arc::new(crate::web::throttle::Throttle::new(
            server.auth_failure_burst,
            server.auth_failures_per_minute,
        )),
        body_limits: crate::web::server::BodyLimits {
            timeout: server.body_timeout,
            max_bytes: server.max_body_bytes,
        },
    });
    let token = shutdown.clone();
    tasks.push(tokio::spawn(crate::web::server::serve(
        listener, app, limits, token,
    )));
    tracing::info!(%addr, policy = %settings.policy, "provisioner listening on http://{addr}/");
    Ok(Running {
        addr,
        engine,
        dispatcher,
        simulator,
        simulator_addr,
        health,
        shutdown,
        tasks,
    })
}

/// `provisioner serve`: runs until SIGTERM or Ctrl-C, then shuts down gracefully.
///
/// # Errors
/// Start-up failures.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let running = start(&settings, Arc::new(SystemClock), StartOptions::default()).await?;
    if let Some(src) = &settings.source {
        tracing::info!("configuration read from {}", src.display());
    }
    wait_for_signal().await;
    tracing::info!("shutting down: in-flight steps finish or release their leases");
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// A simulator seed that differs from one start to the next (`provisioner simulator --seed`
/// fixes one to repeat a run).
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

pub(crate) async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// The admin use cases on the configured database, for `provisioner orders`: they read and
/// change orders but never buy or decrypt, so no provider and no credentials key are built.
///
/// # Errors
/// Configuration or database failures.
pub async fn offline_admin(settings: &Settings) -> anyhow::Result<AdminService> {
    Ok(
        AdminService::new(store(settings).await?, Arc::new(SystemClock))
            .with_actions_per_hour(settings.policy.server.per_hour),
    )
}

/// The catalog service on the configured database and SmartVPS (or the built-in simulator's
/// default catalog), for `provisioner catalog`: syncing is a call to SmartVPS, so this one
/// needs a provider.
///
/// # Errors
/// Configuration or database failures, or a SmartVPS client that cannot be built.
pub async fn offline_catalog(settings: &Settings) -> anyhow::Result<Catalog> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = store(settings).await?;
    let provider: Arc<dyn Provider> = match &settings.smartvps {
        Some(s) => client(
            &s.base_url,
            &s.path_prefix,
            &s.username,
            s.password.clone(),
            Arc::clone(&clock),
        )?,
        None => Arc::new(Simulator::with_default_catalog(Arc::clone(&clock), 1).provider()),
    };
    Ok(Catalog::new(
        store,
        provider,
        clock,
        settings.policy.buy.timeout,
        settings.catalog.low_stock,
    ))
}

/// `provisioner simulator`: the simulator alone on `listen`.
///
/// # Errors
/// Bind failures.
pub async fn run_simulator(
    listen: SocketAddr,
    username: String,
    password: String,
    path_prefix: String,
    seed: u64,
    faults: Option<(String, crate::simulator::FaultProfile)>,
) -> anyhow::Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let sim = Simulator::with_default_catalog(clock, seed);
    if let Some((name, profile)) = faults {
        println!("fault profile {name:?}: random faults on every unscripted call");
        sim.set_fault_profile(Some(profile));
    }
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    println!(
        "SmartVPS simulator listening on http://{addr}/{path_prefix} (user {username:?}); Ctrl-C stops it"
    );
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        token.cancel();
    });
    let cfg = HttpConfig {
        prefix: path_prefix,
        ..HttpConfig::new(username, password)
    };
    simulator::serve(sim, listener, cfg, shutdown).await?;
    Ok(())
}
