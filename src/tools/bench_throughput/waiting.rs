//! A `provisioner serve` child with orders waiting on timers, for the RSS figure.

use super::*;

pub(super) struct WaitingRss {
    pub(super) idle_kb: u64,
    pub(super) rss_kb: u64,
    pub(super) peak_kb: u64,
}

/// Kills the child when dropped, however the measurement ends.
pub(super) struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) async fn waiting_rss(opts: &Options, db: &mut BenchDb) -> anyhow::Result<WaitingRss> {
    let url = db.fresh("waiting").await?;
    // Migrate before the child starts, and keep a store to watch the orders settle.
    let watch = crate::store::open(&url).await?;
    // The child's SmartVPS: this process serves a simulator whose packages are all sold out.
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let sim = Simulator::new(clock, 2);
    for i in 0..SOLD_OUT_PACKAGES {
        sim.add_package(PackageSpec::new(2000 + i, &format!("20.{i}"), 0)?);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_addr = listener.local_addr()?;
    let sim_stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(crate::simulator::serve(
        sim,
        listener,
        crate::simulator::HttpConfig::new("bench", "bench-simulator"),
        sim_stop.clone(),
    ));
    let _stop_simulator = sim_stop.drop_guard();
    let config = db.dir.path().join("waiting.toml");
    // Buy attempts are refused at once (sold out) and then wait an hour.
    std::fs::write(
        &config,
        format!(
            "[policy.buy]\nattempts = 3\ntimeout = \"5s\"\ndelays = [\"1h\", \"1h\"]\n[worker]\npoll_interval = \"1s\"\n\
             [smartvps]\nbase_url = \"http://{sim_addr}/\"\nusername = \"bench\"\npassword = \"bench-simulator\"\n"
        ),
    )?;
    let key = Cipher::generate_key();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log_path = db.dir.path().join("waiting.log");
    let log = std::fs::File::create(&log_path)?;
    let log_tail = || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    let exe = std::env::current_exe().context("finding the provisioner binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--config").arg(&config).arg("serve");
    for var in crate::config::ENV_VARS {
        cmd.env_remove(var);
    }
    let storefront_secret = crate::crypto::random_token();
    cmd.env("PROVISIONER_DATABASE_URL", &url)
        .env(
            "PROVISIONER_STOREFRONTS",
            format!(
                "bench:{}",
                secrecy::ExposeSecret::expose_secret(&storefront_secret)
            ),
        )
        .env("PROVISIONER_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "PROVISIONER_SECRET_KEY",
            secrecy::ExposeSecret::expose_secret(&key),
        )
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let child = ChildGuard(cmd.spawn().context("starting provisioner serve")?);
    let pid = child.0.id().to_string();
    let api = format!("http://127.0.0.1:{port}");
    // reqwest is built without a default TLS provider (the SmartVPS client installs ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{api}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if Instant::now() > deadline {
            bail!(
                "the serve child did not answer within 30 s; its log:\n{}",
                log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let idle_kb = rss_kb(&pid);

    let next = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (http, api, next, n, secret) = (
            http.clone(),
            api.clone(),
            Arc::clone(&next),
            opts.waiting as u64,
            storefront_secret.clone(),
        );
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                let body = serde_json::json!({
                    "order_ref": format!("wait-{i}"),
                    "package": 2000 + (i % u64::from(SOLD_OUT_PACKAGES)),
                    "ram_gb": 2,
                    "customer": { "email": format!("w{i}@example.com"), "name": "Waiting" },
                });
                let r = crate::web::storefront::signed_json(
                    &http,
                    &format!("{api}/api/v1/orders"),
                    secrecy::ExposeSecret::expose_secret(&secret),
                    &body,
                )
                .send()
                .await?;
                if !r.status().is_success() {
                    bail!("intake refused order wait-{i}: {}", r.status());
                }
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    // Settled when every order was worked once and sits in its hour-long wait.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let counts = watch.state_counts().await?;
        let buying = counts
            .iter()
            .find(|(s, _)| *s == OrderState::Buying)
            .map_or(0, |(_, n)| *n);
        let next_due = watch.next_due().await?;
        let far = SystemClock.now().plus(Duration::from_secs(1800));
        if buying == opts.waiting as u64 && next_due.is_some_and(|t| t > far) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "orders did not settle into their waits: {counts:?}; the child's log:\n{}",
                log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rss = WaitingRss {
        idle_kb,
        rss_kb: rss_kb(&pid),
        peak_kb: peak_rss_kb(&pid),
    };
    drop(child);
    Ok(rss)
}

pub(super) fn status_field_kb(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(Path::new("/proc").join(pid).join("status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident set size now, in kB (`self` or a pid).
pub(super) fn rss_kb(pid: &str) -> u64 {
    status_field_kb(pid, "VmRSS:")
}

/// Peak resident set size, in kB (`self` or a pid).
pub(super) fn peak_rss_kb(pid: &str) -> u64 {
    status_field_kb(pid, "VmHWM:")
}
