//! Raw values plus environment to settings, each checked under the key it came from.

use super::*;
use crate::engine;

// ---------------------------------------------------------------------------------------------
// Raw values plus environment to settings, each checked under the key it came from.

pub(super) struct Env<'a>(pub(super) &'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    pub(super) fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.is_empty())
    }

    /// The environment's value (keyed by the variable's name) if set, else the file's (keyed by
    /// its TOML path).
    pub(super) fn or_file(
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

pub(super) fn resolve_policy(raw: RawPolicy, env: &Env<'_>) -> Result<RetryPolicy, ConfigError> {
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
    let mut buy = raw.buy.unwrap_or_default();
    let mut status = raw.status.unwrap_or_default();
    for (key, per_hour) in [
        ("policy.buy.per_hour", buy.per_hour.take()),
        ("policy.status.per_hour", status.per_hour.take()),
    ] {
        if per_hour.is_some() {
            return Err(ConfigError::new(
                key,
                "only server actions have an hourly limit (policy.action.per_hour)",
            ));
        }
    }
    let server = resolve_server_policy(
        raw.action.unwrap_or_default(),
        raw.install.unwrap_or_default(),
        raw.renew.unwrap_or_default(),
    )?;
    if status.horizon.take().is_some() {
        return Err(ConfigError::new(
            "policy.status.horizon",
            "only the buy phase has a horizon (policy.buy.horizon): a status call changes nothing upstream",
        ));
    }
    let horizon = match buy.horizon.take() {
        Some(text) => parse_duration("policy.buy.horizon", &text.0)?,
        None => defaults.horizon,
    };
    let policy = RetryPolicy {
        buy: resolve_phase(buy, defaults.buy, "policy.buy")?,
        status: resolve_phase(status, defaults.status, "policy.status")?,
        on_unknown,
        horizon,
        server,
    };
    policy
        .validate_horizon()
        .map_err(|message| ConfigError::new("policy.buy.horizon", message))?;
    Ok(policy)
}

/// `[policy.action]` and `[policy.install]`.
fn resolve_server_policy(
    mut action: RawPhase,
    install: RawInstall,
    renew: RawRenew,
) -> Result<crate::policy::ServerPolicy, ConfigError> {
    let defaults = crate::policy::ServerPolicy::default();
    let horizon = action.horizon.take();
    let per_hour = action.per_hour.take();
    let duration = |key: &str, raw: Option<DurationText>, default: Duration| match raw {
        Some(text) => parse_duration(key, &text.0),
        None => Ok(default),
    };
    let server = crate::policy::ServerPolicy {
        action: resolve_phase(action, defaults.action.clone(), "policy.action")?,
        action_horizon: duration("policy.action.horizon", horizon, defaults.action_horizon)?,
        per_hour: per_hour.unwrap_or(defaults.per_hour),
        install_poll: duration("policy.install.poll", install.poll, defaults.install_poll)?,
        install_limit: duration(
            "policy.install.limit",
            install.limit,
            defaults.install_limit,
        )?,
        renew: crate::policy::RenewPolicy {
            call: resolve_phase(
                RawPhase {
                    attempts: renew.attempts,
                    timeout: renew.timeout,
                    delays: renew.delays,
                    horizon: None,
                    per_hour: None,
                },
                defaults.renew.call.clone(),
                "policy.renew",
            )?,
            horizon: duration(
                "policy.renew.horizon",
                renew.horizon,
                defaults.renew.horizon,
            )?,
            remind_before: duration(
                "policy.renew.remind_before",
                renew.remind_before,
                defaults.renew.remind_before,
            )?,
            sweep: duration("policy.renew.sweep", renew.sweep, defaults.renew.sweep)?,
        },
    };
    server
        .validate()
        .map_err(|(key, message)| ConfigError::new(format!("policy.{key}"), message))?;
    Ok(server)
}

pub(super) fn resolve_phase(
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

pub(super) fn resolve_smartvps(
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
    if has_userinfo(base_url) {
        // The value is not echoed: the part before `@` is a credential.
        return Err(ConfigError::new(
            base_url_key,
            "must not carry credentials (user:password@); set SMARTVPS_USERNAME and SMARTVPS_PASSWORD instead",
        ));
    }
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

/// Whether a URL's authority (between `://` and the first `/`, `?` or `#`) holds an `@`, that is
/// user info: a credential written into the URL.
pub(super) fn has_userinfo(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.contains('@')
}

/// `http(s)://` followed by a host, with no whitespace anywhere. Deliberately loose: the client
/// reports anything subtler when it first connects.
pub(super) fn is_http_url(text: &str) -> bool {
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

pub(super) fn resolve_database(
    raw: RawDatabase,
    env: &Env<'_>,
) -> Result<DatabaseSettings, ConfigError> {
    let Some((url, key)) = env.or_file(ENV_DATABASE_URL, raw.url, "database.url") else {
        return Ok(DatabaseSettings {
            url: DEFAULT_DATABASE_URL.to_owned(),
            key: "database.url".to_owned(),
        });
    };
    let url = url.trim().to_owned();
    let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if postgres {
        Ok(DatabaseSettings { url, key })
    } else if url.starts_with("sqlite:") {
        sqlite_file(&url).map_err(|why| ConfigError::new(&key, why))?;
        Ok(DatabaseSettings { url, key })
    } else {
        Err(ConfigError::new(
            key,
            format!(
                "must be a sqlite: URL such as \"{DEFAULT_DATABASE_URL}\" or a postgres:// URL such as \
                 \"postgres://provisioner@db.internal:5432/provisioner\"; got {:?}",
                crate::redact::url(&url, crate::redact::User::Shown)
            ),
        ))
    }
}

/// The file a `sqlite:` URL names, refusing URLs that name none or an in-memory database: either
/// would start a service that loses every order (or answers 500 to everything).
pub(super) fn sqlite_file(url: &str) -> Result<std::path::PathBuf, String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let path = rest.split('?').next().unwrap_or_default();
    if rest.contains(":memory:") || rest.contains("mode=memory") {
        return Err(format!(
            "{url:?} is an in-memory SQLite database, which loses every order at exit; name a file such as \"{DEFAULT_DATABASE_URL}\""
        ));
    }
    if path.is_empty() || path.ends_with('/') {
        return Err(format!(
            "{url:?} names no database file; name one such as \"{DEFAULT_DATABASE_URL}\""
        ));
    }
    Ok(std::path::PathBuf::from(path))
}

pub(super) fn resolve_server(raw: RawServer, env: &Env<'_>) -> Result<ServerSettings, ConfigError> {
    let (text, key) = env
        .or_file(ENV_LISTEN, raw.listen, "server.listen")
        .unwrap_or_else(|| (DEFAULT_LISTEN.to_owned(), "server.listen".to_owned()));
    let listen = text.trim().parse::<SocketAddr>().map_err(|_| {
        ConfigError::new(
            key,
            format!("must be an IP address and port such as \"{DEFAULT_LISTEN}\" (host names are not resolved); got {text:?}"),
        )
    })?;
    let duration = |text: Option<DurationText>, key: &str, default: Duration| match text {
        Some(text) => {
            let d = parse_duration(key, &text.0)?;
            if d.is_zero() {
                return Err(ConfigError::new(key, "must be longer than zero"));
            }
            Ok(d)
        }
        None => Ok(default),
    };
    let positive = |value: Option<usize>, key: &str, default: usize| match value {
        Some(0) => Err(ConfigError::new(key, "must be at least 1")),
        Some(v) => Ok(v),
        None => Ok(default),
    };
    let max_connections = positive(
        raw.max_connections,
        "server.max_connections",
        DEFAULT_MAX_CONNECTIONS,
    )?;
    let max_connections_per_client = positive(
        raw.max_connections_per_client,
        "server.max_connections_per_client",
        DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
    )?;
    let max_body_bytes = positive(
        raw.max_body_bytes,
        "server.max_body_bytes",
        DEFAULT_MAX_BODY_BYTES,
    )?;
    if max_body_bytes < 1024 {
        return Err(ConfigError::new(
            "server.max_body_bytes",
            "must be at least 1024: an order's JSON alone can be several hundred bytes",
        ));
    }
    let auth_failure_burst = match raw.auth_failure_burst {
        Some(0) => {
            return Err(ConfigError::new(
                "server.auth_failure_burst",
                "must be at least 1, or every client would be throttled before its first try",
            ));
        }
        Some(v) => v,
        None => DEFAULT_AUTH_FAILURE_BURST,
    };
    let auth_failures_per_minute = match raw.auth_failures_per_minute {
        Some(0) => {
            return Err(ConfigError::new(
                "server.auth_failures_per_minute",
                "must be at least 1, or a throttled address would stay locked out for ever",
            ));
        }
        Some(v) => v,
        None => DEFAULT_AUTH_FAILURES_PER_MINUTE,
    };
    let trusted_proxies = raw
        .trusted_proxies
        .unwrap_or_default()
        .iter()
        .map(|text| {
            text.trim().parse::<std::net::IpAddr>().map_err(|_| {
                ConfigError::new(
                    "server.trusted_proxies",
                    format!("must list IP addresses such as \"127.0.0.1\" (no names, no networks); got {text:?}"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ServerSettings {
        listen,
        max_connections,
        max_connections_per_client,
        header_timeout: duration(
            raw.header_timeout,
            "server.header_timeout",
            DEFAULT_HEADER_TIMEOUT,
        )?,
        body_timeout: duration(
            raw.body_timeout,
            "server.body_timeout",
            DEFAULT_BODY_TIMEOUT,
        )?,
        idle_timeout: duration(
            raw.idle_timeout,
            "server.idle_timeout",
            DEFAULT_IDLE_TIMEOUT,
        )?,
        max_body_bytes,
        auth_failure_burst,
        auth_failures_per_minute,
        trusted_proxies,
    })
}

pub(super) fn resolve_worker(
    raw: RawWorker,
    policy: &RetryPolicy,
    env: &Env<'_>,
) -> Result<WorkerSettings, ConfigError> {
    let defaults = engine::WorkerSettings::for_policy(policy);
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
            raw.concurrency.unwrap_or(defaults.concurrency),
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
        defaults.poll_interval,
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
            let minimum = engine::WorkerSettings::minimum_lease(policy);
            if lease <= minimum {
                return Err(ConfigError::new(
                    "worker.lease",
                    format!(
                        "must be longer than {} (2 x policy.buy.timeout = {}, policy.status.timeout = {} and \
                         policy.action.timeout = {}): a lease shorter than a step lets another worker take over an \
                         order mid-call and send it again; got {}",
                        humantime::format_duration(minimum),
                        humantime::format_duration(policy.buy.timeout.saturating_mul(2)),
                        humantime::format_duration(policy.status.timeout),
                        humantime::format_duration(policy.server.action.timeout),
                        humantime::format_duration(lease),
                    ),
                ));
            }
            lease
        }
        None => defaults.lease,
    };
    let purchase_grace = duration(
        raw.purchase_grace,
        "worker.purchase_grace",
        defaults.purchase_grace,
    )?;
    if purchase_grace.is_zero() {
        return Err(ConfigError::new(
            "worker.purchase_grace",
            "must be greater than zero, or shutdown cuts off a buyVps in flight into an unknown outcome",
        ));
    }
    Ok(WorkerSettings {
        engine: engine::WorkerSettings {
            concurrency,
            lease,
            poll_interval,
            purchase_grace,
            ..defaults
        },
        shutdown_grace,
    })
}

pub(super) fn resolve_notify(raw: RawNotify, env: &Env<'_>) -> Result<NotifySettings, ConfigError> {
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
    let mut email = raw
        .email
        .map(|e| resolve_email(e, timeout, env))
        .transpose()?;
    let public_url = raw
        .public_url
        .map(|u| {
            let u = u.trim().trim_end_matches('/').to_string();
            if u.starts_with("https://") || u.starts_with("http://") {
                Ok(u)
            } else {
                Err(ConfigError::new(
                    "notify.public_url",
                    format!("must be an http:// or https:// URL such as https://provisioner.example.com; got {u:?}"),
                ))
            }
        })
        .transpose()?;
    let templates = resolve_templates(
        raw.templates.unwrap_or_default(),
        public_url,
        email.as_mut(),
    )?;
    Ok(NotifySettings {
        webhooks,
        email,
        max_attempts,
        backoff_base,
        backoff_cap,
        timeout,
        templates,
    })
}

/// `[notify.templates]`: the texts, checked for unknown `{variables}` under their key; `from`
/// replaces the email From.
fn resolve_templates(
    raw: RawTemplates,
    public_url: Option<String>,
    email: Option<&mut EmailSettings>,
) -> Result<Templates, ConfigError> {
    if let Some(from) = raw.from {
        let Some(email) = email else {
            return Err(ConfigError::new(
                "notify.templates.from",
                "is the From of customer email, but no [notify.email] is configured",
            ));
        };
        email.from = from.trim().parse().map_err(|e| {
            ConfigError::new(
                "notify.templates.from",
                format!("not an address ({e}): {from:?}"),
            )
        })?;
    }
    let mut overrides = std::collections::BTreeMap::new();
    for (name, t) in [
        ("provisioning", raw.provisioning),
        ("ready", raw.ready),
        ("failed", raw.failed),
        ("delayed", raw.delayed),
        ("needs_attention", raw.needs_attention),
        ("cancelled", raw.cancelled),
        ("resumed", raw.resumed),
    ] {
        let Some(t) = t else { continue };
        for (part, text) in [("subject", &t.subject), ("body", &t.body)] {
            if let Some(bad) = text.as_deref().and_then(Templates::unknown_variable) {
                return Err(ConfigError::new(
                    format!("notify.templates.{name}.{part}"),
                    format!(
                        "unknown variable {{{bad}}}; known: {} (write {{{{ for a brace)",
                        crate::notify::templates::VARIABLES.join(", ")
                    ),
                ));
            }
        }
        if t.subject.as_deref().is_some_and(|s| s.contains('\n')) {
            return Err(ConfigError::new(
                format!("notify.templates.{name}.subject"),
                "must be one line",
            ));
        }
        overrides.insert(
            name.to_string(),
            Template {
                subject: t.subject,
                body: t.body,
            },
        );
    }
    Ok(Templates {
        signature: raw.signature.unwrap_or_default().trim().to_string(),
        support_url: raw
            .support_url
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty()),
        public_url,
        overrides,
    })
}

pub(super) fn resolve_webhook(
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

pub(super) fn resolve_email(
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
pub(super) fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(super) fn resolve_catalog(raw: RawCatalog) -> Result<CatalogSettings, ConfigError> {
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
pub(super) fn resolve_admin(raw: RawAdmin, env: &Env<'_>) -> Result<AdminSettings, ConfigError> {
    let entries: Vec<(String, Option<String>, Option<String>)> = match env.get(ENV_ADMIN_TOKENS) {
        Some(text) => name_secret_list(ENV_ADMIN_TOKENS, &text)?
            .into_iter()
            .map(|(at, name, token)| (at, Some(name), Some(token)))
            .collect(),
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
        if !is_valid_name(&name) {
            return Err(ConfigError::new(
                key("name"),
                format!(
                    "a token's name must be 1 to 64 letters, digits, '.', '_', '@' or '-'; got {name:?}"
                ),
            ));
        }
        let token = token.unwrap_or_default();
        if token.chars().count() < MIN_ADMIN_TOKEN_LEN
            || token.chars().any(char::is_whitespace)
            || secret_bits(&token) < MIN_SECRET_BITS
        {
            return Err(ConfigError::new(
                key("token"),
                format!(
                    "the token of {name:?} must be at least {MIN_ADMIN_TOKEN_LEN} characters without spaces and carry at \
                     least {MIN_SECRET_BITS} bits (a random-looking secret of 22 or more characters; `provisioner keygen` \
                     prints a good one)"
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

/// Storefronts from `PROVISIONER_STOREFRONTS` when set (it replaces the file's list), else from
/// `[[storefronts]]`, whose secrets come from the environment variables they name. No error
/// message ever contains a secret.
pub(super) fn resolve_storefronts(
    raw: Option<Vec<RawStorefront>>,
    env: &Env<'_>,
    admin: &AdminSettings,
) -> Result<Vec<Storefront>, ConfigError> {
    // (key naming the entry, name, secret)
    let entries: Vec<(String, String, String)> = match env.get(ENV_STOREFRONTS) {
        Some(text) => name_secret_list(ENV_STOREFRONTS, &text)?,
        None => {
            let mut out = Vec::new();
            for (i, s) in raw.unwrap_or_default().into_iter().enumerate() {
                let at = format!("storefronts[{i}]");
                let var = s.secret_env.unwrap_or_default();
                if var.trim().is_empty() {
                    return Err(ConfigError::new(
                        format!("{at}.secret_env"),
                        "is required: the name of the environment variable holding this storefront's secret",
                    ));
                }
                let secret = env.get(var.trim()).ok_or_else(|| {
                    ConfigError::new(
                        format!("{at}.secret_env"),
                        format!("names {:?}, which is not set", var.trim()),
                    )
                })?;
                out.push((at, s.name.unwrap_or_default(), secret));
            }
            out
        }
    };
    let mut storefronts: Vec<Storefront> = Vec::with_capacity(entries.len());
    for (at, name, secret) in entries {
        let key = |field: &str| {
            if at == ENV_STOREFRONTS {
                at.clone()
            } else {
                format!("{at}.{field}")
            }
        };
        if !is_valid_name(&name) {
            return Err(ConfigError::new(
                key("name"),
                format!(
                    "a storefront's name must be 1 to 64 letters, digits, '.', '_', '@' or '-'; got {name:?}"
                ),
            ));
        }
        let secret_key = if at == ENV_STOREFRONTS {
            at.clone()
        } else {
            format!("{at}.secret_env")
        };
        if secret.chars().any(char::is_whitespace) || secret_bits(&secret) < MIN_SECRET_BITS {
            return Err(ConfigError::new(
                secret_key,
                format!(
                    "the secret of storefront {name:?} must carry at least {MIN_SECRET_BITS} bits, without spaces (a \
                     random-looking secret of 22 or more characters; `provisioner keygen` prints a good one)"
                ),
            ));
        }
        if storefronts.iter().any(|s| s.name == name) {
            return Err(ConfigError::new(
                key("name"),
                format!(
                    "{name:?} is named twice: the name says who sent an order, so it must be unique"
                ),
            ));
        }
        if storefronts
            .iter()
            .any(|s| secrecy::ExposeSecret::expose_secret(&s.secret) == secret)
        {
            return Err(ConfigError::new(
                secret_key,
                format!(
                    "the secret of storefront {name:?} is also another storefront's: each needs its own"
                ),
            ));
        }
        if admin
            .tokens
            .iter()
            .any(|t| secrecy::ExposeSecret::expose_secret(&t.token) == secret)
        {
            return Err(ConfigError::new(
                secret_key,
                format!(
                    "the secret of storefront {name:?} is also an admin token: a storefront must not be able to act as an admin"
                ),
            ));
        }
        storefronts.push(Storefront {
            name,
            secret: SecretString::from(secret),
        });
    }
    Ok(storefronts)
}

/// Whether a name (of an admin token or a storefront) is 1 to 64 letters, digits, `.`, `_`,
/// `@` or `-`: it is recorded in timelines and logs as who acted.
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
}

/// The `NAME:SECRET,NAME:SECRET` list of an environment variable, each entry as
/// `(variable, name, secret)`. An entry without `:` is refused by its position: it is not echoed,
/// as it may be a secret whose name was forgotten.
fn name_secret_list(var: &str, text: &str) -> Result<Vec<(String, String, String)>, ConfigError> {
    text.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
        .map(|(i, entry)| match entry.split_once(':') {
            Some((name, secret)) => Ok((
                var.to_owned(),
                name.trim().to_owned(),
                secret.trim().to_owned(),
            )),
            None => Err(ConfigError::new(
                var,
                format!(
                    "entry {} is not NAME:SECRET (entries are separated by commas)",
                    i + 1
                ),
            )),
        })
        .collect()
}
