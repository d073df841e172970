//! The config tests: every key, every error naming its key, the example file.

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
    assert_eq!(s.worker.engine.concurrency, 32);
    assert_eq!(s.worker.engine.lease, Duration::from_secs(2 * 120 + 30));
    assert_eq!(s.worker.engine.poll_interval, Duration::from_secs(1));
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
    assert_eq!(
        s.worker.engine.lease,
        crate::engine::WorkerSettings::default_lease(&s.policy)
    );
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
    let readme = include_str!("../../README.md");
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
    assert_eq!(hook.events.len(), 4);
    assert!(hook.events.iter().any(|e| e == "admin.alert"), "opted in");
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
fn example_templates_block_parses_when_uncommented_and_bad_variables_are_named() {
    let text = uncommented(&[
        "# [notify.email]",
        "# [notify.templates]",
        "# [notify.templates.failed]",
        "# public_url",
    ]);
    let env = env_of(&[("PROVISIONER_SMTP_PASSWORD", "smtp-pass")]);
    let s = Settings::from_sources(Some(&text), &env).unwrap();
    let t = &s.notify.templates;
    assert_eq!(t.signature, "The Example Hosting team");
    assert_eq!(
        t.support_url.as_deref(),
        Some("https://example.com/support")
    );
    assert_eq!(
        t.public_url.as_deref(),
        Some("https://provisioner.example.com")
    );
    assert!(
        t.overrides["failed"]
            .body
            .as_deref()
            .unwrap()
            .contains("{next_step}")
    );
    let from = &s.notify.email.as_ref().unwrap().from;
    assert_eq!(
        from.email.to_string(),
        "support@example.com",
        "templates.from wins"
    );
    for (text, key) in [
        (
            "[notify.templates.failed]\nbody = \"Hi {nmae}\"\n",
            "notify.templates.failed.body",
        ),
        (
            "[notify.templates.shipped]\nbody = \"x\"\n",
            "notify.templates.shipped",
        ),
        (
            "[notify.templates]\nfrom = \"a@b.c\"\n",
            "notify.templates.from",
        ),
        (
            "[notify]\npublic_url = \"example.com\"\n",
            "notify.public_url",
        ),
    ] {
        assert_eq!(key_of(from_toml(text)), key, "{text}");
    }
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
    let err = Settings::from_sources(Some(text), &env_of(&[("HOOK_SECRET", "abc")])).unwrap_err();
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
        let err = Settings::from_sources(None, &env_of(&[("PROVISIONER_ADMIN_TOKENS", &value)]))
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
    assert_eq!(s.worker.engine.concurrency, 4);
    assert_eq!(s.worker.engine.poll_interval, Duration::from_millis(250));
    // The default lease follows the configured timeouts: 2 x max(45s, 90s) + 30s.
    assert_eq!(s.worker.engine.lease, Duration::from_secs(210));
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
fn purchase_grace_defaults_to_the_buy_timeout_and_must_be_positive() {
    let s = from_toml("[policy.buy]\ntimeout = \"45s\"\nhorizon = \"10m\"\n").unwrap();
    assert_eq!(s.worker.engine.purchase_grace, Duration::from_secs(45));
    let s = from_toml("[worker]\npurchase_grace = \"5m\"\n").unwrap();
    assert_eq!(s.worker.engine.purchase_grace, Duration::from_secs(300));
    assert_eq!(
        key_of(from_toml("[worker]\npurchase_grace = \"0s\"\n")),
        "worker.purchase_grace"
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
    let err =
        from_toml("[smartvps]\nbase_url = \"https://smartvps.online/\"\nusername = \"reseller\"\n")
            .unwrap_err();
    assert_eq!(err.key, "smartvps.password");
    assert_eq!(
        err.message,
        "required when smartvps.base_url is set (or set SMARTVPS_PASSWORD)"
    );
    let err = from_toml("[smartvps]\nbase_url = \"https://smartvps.online/\"\npassword = \"x\"\n")
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
    assert!(err.message.contains("mid-call"), "{}", err.message);
    assert_eq!(
        from_toml("[worker]\nlease = \"4m 1s\"\n")
            .unwrap()
            .worker
            .engine
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
        ("PROVISIONER_DATABASE_URL", "sqlite://from-env.db"),
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
    assert_eq!(s.database.url, "sqlite://from-env.db");
    assert_eq!(s.server.listen, "0.0.0.0:9000".parse().unwrap());
    assert_eq!(s.policy.on_unknown, OnUnknown::Retry);
    assert_eq!(s.worker.engine.concurrency, 8);
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
    let err = Settings::from_sources(None, &env_of(&[("SMARTVPS_BASE_URL", "https://x.example")]))
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
    assert_eq!(s.worker.engine.concurrency, 5);
    assert_eq!(s.source.as_deref(), Some(path.as_path()));
    let missing = dir.path().join("missing.toml");
    let err = Settings::load(Some(&missing)).unwrap_err();
    assert_eq!(err.key, missing.display().to_string());
}

const SHOP_SECRET: &str = "shop-secret-7f3a9c2e41d85b60aa";

#[test]
fn storefronts_come_from_the_environment_or_the_file_with_secrets_from_the_environment() {
    let s = Settings::from_sources(
        None,
        &env_of(&[(
            "PROVISIONER_STOREFRONTS",
            "shop:shop-secret-7f3a9c2e41d85b60aa, other:other-secret-0b1e2d3c4f5a69",
        )]),
    )
    .unwrap();
    let names: Vec<&str> = s.storefronts.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["shop", "other"]);
    assert_eq!(s.storefronts[0].secret.expose_secret(), SHOP_SECRET);
    assert!(
        !format!("{s:?}").contains(SHOP_SECRET),
        "Debug hides the secret"
    );

    let file = "[[storefronts]]\nname = \"shop\"\nsecret_env = \"SHOP_SIGNING_SECRET\"\n";
    let s = Settings::from_sources(Some(file), &env_of(&[("SHOP_SIGNING_SECRET", SHOP_SECRET)]))
        .unwrap();
    assert_eq!(s.storefronts[0].name, "shop");
    // The environment's list replaces the file's.
    let s = Settings::from_sources(
        Some(file),
        &env_of(&[(
            "PROVISIONER_STOREFRONTS",
            "env-shop:other-secret-0b1e2d3c4f5a69",
        )]),
    )
    .unwrap();
    assert_eq!(s.storefronts.len(), 1);
    assert_eq!(s.storefronts[0].name, "env-shop");
    assert!(Settings::default().storefronts.is_empty());
}

#[test]
fn bad_storefronts_name_their_key_and_never_echo_the_secret() {
    // (environment, file, the key the error must name)
    type Case<'a> = (Vec<(&'a str, &'a str)>, Option<&'a str>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            vec![("PROVISIONER_STOREFRONTS", "shop:aaaaaaaaaaaaaaaaaaaaaaaa")],
            None,
            "PROVISIONER_STOREFRONTS",
        ),
        (
            vec![("PROVISIONER_STOREFRONTS", "shop-secret-7f3a9c2e41d85b60aa")],
            None,
            "PROVISIONER_STOREFRONTS",
        ),
        (
            vec![(
                "PROVISIONER_STOREFRONTS",
                "shop:shop-secret-7f3a9c2e41d85b60aa,shop:other-secret-0b1e2d3c4f5a69",
            )],
            None,
            "PROVISIONER_STOREFRONTS",
        ),
        (
            vec![],
            Some("[[storefronts]]\nname = \"shop\"\nsecret_env = \"UNSET_VAR_X\"\n"),
            "storefronts[0].secret_env",
        ),
        (
            vec![],
            Some("[[storefronts]]\nname = \"shop\"\n"),
            "storefronts[0].secret_env",
        ),
        (
            vec![("S", "short")],
            Some("[[storefronts]]\nname = \"shop\"\nsecret_env = \"S\"\n"),
            "storefronts[0].secret_env",
        ),
        (
            vec![("S", SHOP_SECRET)],
            Some("[[storefronts]]\nname = \"a shop\"\nsecret_env = \"S\"\n"),
            "storefronts[0].name",
        ),
        (
            vec![("S", SHOP_SECRET)],
            Some("[[storefronts]]\nname = \"shop\"\nsecret_env = \"S\"\nsecret = \"x\"\n"),
            "storefronts[0].secret",
        ),
        (
            vec![
                (
                    "PROVISIONER_STOREFRONTS",
                    "shop:shop-secret-7f3a9c2e41d85b60aa",
                ),
                (
                    "PROVISIONER_ADMIN_TOKENS",
                    "alice:shop-secret-7f3a9c2e41d85b60aa",
                ),
            ],
            None,
            "PROVISIONER_STOREFRONTS",
        ),
    ];
    for (env, file, key) in cases {
        let e = Settings::from_sources(file, &env_of(&env)).unwrap_err();
        assert!(e.key.starts_with(key), "{key}: {e}");
        for secret in ["aaaaaaaaaaaaaaaaaaaaaaaa", SHOP_SECRET, "short"] {
            assert!(!e.to_string().contains(secret), "{e}");
        }
    }
}

#[test]
fn server_limits_and_database_urls_are_checked() {
    let s = from_toml(
        "[server]\nmax_connections = 64\nheader_timeout = \"2s\"\nmax_body_bytes = 4096\n",
    )
    .unwrap();
    assert_eq!(s.server.max_connections, 64);
    assert_eq!(s.server.header_timeout, Duration::from_secs(2));
    assert_eq!(s.server.max_body_bytes, 4096);
    assert!(s.server.trusted_proxies.is_empty());
    let s = from_toml("[server]\ntrusted_proxies = [\"127.0.0.1\", \"::1\"]\n").unwrap();
    assert_eq!(s.server.trusted_proxies.len(), 2);
    for (toml, key) in [
        (
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
            "server.trusted_proxies",
        ),
        ("[server]\nmax_connections = 0\n", "server.max_connections"),
        ("[server]\nidle_timeout = \"0s\"\n", "server.idle_timeout"),
        ("[server]\nmax_body_bytes = 10\n", "server.max_body_bytes"),
        (
            "[server]\nauth_failure_burst = 0\n",
            "server.auth_failure_burst",
        ),
        (
            "[server]\nauth_failures_per_minute = 0\n",
            "server.auth_failures_per_minute",
        ),
        ("[database]\nurl = \"sqlite://\"\n", "database.url"),
        ("[database]\nurl = \"sqlite::memory:\"\n", "database.url"),
        ("[database]\nurl = \"sqlite://dir/\"\n", "database.url"),
        (
            "[smartvps]\nbase_url = \"https://u:p@smartvps.online/\"\nusername = \"u\"\npassword = \"p\"\n",
            "smartvps.base_url",
        ),
    ] {
        let e = from_toml(toml).unwrap_err();
        assert_eq!(e.key, key, "{toml}: {e}");
        assert!(!e.message.contains("u:p@"), "{e}");
    }
    let e = Settings::from_sources(
        None,
        &env_of(&[("PROVISIONER_DATABASE_URL", "sqlite::memory:")]),
    )
    .unwrap_err();
    assert_eq!(e.key, "PROVISIONER_DATABASE_URL");
    assert_eq!(
        sqlite_directory("sqlite://provisioner.db"),
        Some(PathBuf::from("."))
    );
    assert_eq!(
        sqlite_directory("sqlite:///var/lib/p/p.db?mode=rwc"),
        Some(PathBuf::from("/var/lib/p"))
    );
    assert_eq!(sqlite_directory("postgres://db/x"), None);
}

#[test]
fn a_lease_shorter_than_an_action_call_is_refused() {
    let err = from_toml(
        "[policy.action]\ntimeout = \"10m\"\nhorizon = \"10m\"\n[worker]\nlease = \"5m\"\n",
    )
    .unwrap_err();
    assert_eq!(err.key, "worker.lease", "{err}");
    assert!(
        err.to_string().contains("policy.action.timeout = 10m"),
        "{err}"
    );
    // Unset, the lease follows the action timeout.
    let s = from_toml("[policy.action]\ntimeout = \"10m\"\nhorizon = \"10m\"\n").unwrap();
    assert_eq!(
        s.worker.engine.lease,
        std::time::Duration::from_secs(20 * 60 + 30)
    );
}

#[test]
fn the_action_policy_is_checked_by_key() {
    for (toml, key) in [
        (
            "[policy.action]\ntimeout = \"1m\"\nhorizon = \"30s\"\n",
            "policy.action.horizon",
        ),
        ("[policy.action]\nper_hour = 0\n", "policy.action.per_hour"),
        ("[policy.action]\nattempts = 2\n", "policy.action.delays"),
        (
            "[policy.install]\npoll = \"10m\"\nlimit = \"5m\"\n",
            "policy.install.limit",
        ),
        ("[policy.buy]\nper_hour = 3\n", "policy.buy.per_hour"),
    ] {
        let err = from_toml(toml).unwrap_err();
        assert_eq!(err.key, key, "{toml}: {err}");
    }
}
