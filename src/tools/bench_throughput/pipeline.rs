//! The pipeline: orders taken in, worked step by step against an instant simulator, notices delivered.

use super::*;

pub(super) struct PipelineResult {
    /// Taking the orders in.
    pub(super) intake: Duration,
    /// Workers, from the first claim until every order is ready.
    pub(super) work: Duration,
    /// One dispatcher delivering every notice.
    pub(super) notify: Duration,
    pub(super) commits_intake: u64,
    pub(super) commits_work: u64,
    pub(super) commits_notify: u64,
    pub(super) idle_claims: u64,
    pub(super) steps: usize,
    pub(super) p50: Duration,
    pub(super) p99: Duration,
    pub(super) max: Duration,
}

/// The zero-delay policy: every wait is 0, timeouts are positive (validation requires it).
pub(super) fn zero_delay_policy() -> RetryPolicy {
    let phase = PhasePolicy {
        attempts: 3,
        timeout: Duration::from_secs(5),
        delays: vec![Duration::ZERO, Duration::ZERO],
    };
    RetryPolicy {
        buy: phase.clone(),
        status: phase,
        on_unknown: OnUnknown::Reconcile,
        // No purchase is ever unknown in the instant world; the horizon is never reached.
        horizon: Duration::from_secs(5),
        server: crate::policy::ServerPolicy::default(),
    }
}

/// An instant SmartVPS: zero latencies, credentials at once, enough stock for every order.
pub(super) fn instant_world(orders: usize) -> anyhow::Result<Simulator> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let sim = Simulator::new(clock, 1);
    let per_package = u32::try_from(orders / PACKAGES as usize + 16).unwrap_or(u32::MAX);
    for i in 0..PACKAGES {
        // Two-group names ("10.7"): 65,000 addresses each, so a hundred thousand orders fit.
        let name = format!("{}.{}", 10 + i / 256, i % 256);
        let id = PackageId(1000 + i);
        sim.add_package(PackageSpec::new(id.0, &name, per_package)?);
        sim.set_defaults(
            id,
            PackageDefaults {
                buy_latency: Duration::ZERO,
                status_latency: Duration::ZERO,
                build_time: Duration::ZERO,
                os: "ubuntu".into(),
                install_time: Duration::ZERO,
            },
        )?;
    }
    sim.set_ipstock_latency(Duration::ZERO);
    Ok(sim)
}

pub(super) fn request(i: usize) -> OrderRequest {
    OrderRequest {
        order_ref: format!("bench-{i}"),
        package: i64::from(1000 + (i as u32 % PACKAGES)),
        ram_gb: 2,
        customer: CustomerRequest {
            email: format!("customer{i}@example.com"),
            name: "Bench Customer".into(),
        },
        os: None,
    }
}

/// Accepts every notice; the dispatcher's own store work is what is measured.
pub(super) struct NullNotifier;

#[async_trait]
impl Notifier for NullNotifier {
    fn channel(&self) -> &str {
        "null"
    }
    fn accepts(&self, _kind: NoticeKind) -> bool {
        true
    }
    async fn send(&self, _event: &Event) -> Result<(), NotifyError> {
        Ok(())
    }
}

pub(super) async fn pipeline(
    inner: Arc<dyn Store>,
    opts: &Options,
) -> anyhow::Result<PipelineResult> {
    let store = Arc::new(Counting::new(inner));
    let dyn_store: Arc<dyn Store> = store.clone();
    let sim = instant_world(opts.orders)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let cipher = Arc::new(Cipher::from_hex(&Cipher::generate_key())?);
    let policy = zero_delay_policy();
    let settings = WorkerSettings {
        concurrency: 1,
        lease: Duration::from_secs(60),
        poll_interval: Duration::from_millis(2),
        // A flight is held for a few milliseconds here; waiting 10 s would measure the wait.
        flight_wait: Duration::from_millis(5),
        purchase_grace: Duration::from_secs(5),
    };
    let engines: Vec<Arc<Engine>> = (0..opts.workers)
        .map(|_| {
            Arc::new(Engine::new(
                Arc::clone(&dyn_store),
                Arc::new(sim.provider()),
                Arc::clone(&clock),
                policy.clone(),
                Arc::clone(&cipher),
                settings.clone(),
            ))
        })
        .collect();

    // Intake: `workers` concurrent streams of Engine::accept, as the API would call it.
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for engine in &engines {
        let (engine, next, n) = (Arc::clone(engine), Arc::clone(&next), opts.orders as u64);
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                let new =
                    NewOrder::parse(&request(i as usize)).map_err(|e| anyhow::anyhow!("{e:?}"))?;
                if !matches!(engine.accept(new).await?, Intake::Created(_)) {
                    bail!("order bench-{i} was not new");
                }
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    let intake = started.elapsed();
    let commits_intake = store.commits.load(Ordering::Relaxed);

    // The database housekeeping `serve` runs, on the same interval, from here to the end.
    let housekeeping = tokio_util::sync::CancellationToken::new();
    tokio::spawn(crate::store::maintain_until(
        Arc::clone(&dyn_store),
        housekeeping.clone(),
    ));

    // Workers: work one due order one step, its finishing commit claiming the next, as serve's
    // slots do; claim on their own only when that found none. Stop when no order is active.
    // Latency is claim to commit: from before the claim, or from the commit that claimed it.
    let mut workers = tokio::task::JoinSet::new();
    for engine in &engines {
        let (engine, store) = (Arc::clone(engine), Arc::clone(&dyn_store));
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut chained: Option<(Claimed, Instant)> = None;
            loop {
                let (c, t) = match chained.take() {
                    Some(next) => next,
                    None => {
                        let t = Instant::now();
                        let claimed = engine.claim(1).await?;
                        let Some(c) = claimed.into_iter().next() else {
                            match store.next_due().await? {
                                None => return Ok::<_, anyhow::Error>(latencies),
                                // Another worker holds the last orders, or an order waits out a
                                // flight: look again shortly.
                                Some(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                            }
                            continue;
                        };
                        (c, t)
                    }
                };
                let next = engine.work_then_claim(c, 1).await?;
                let done = Instant::now();
                latencies.push(done - t);
                chained = next.into_iter().next().map(|c| (c, done));
            }
        });
    }
    let mut latencies = Vec::with_capacity(opts.orders * 2);
    while let Some(done) = workers.join_next().await {
        latencies.extend(done.context("worker task")??);
    }
    let work = started.elapsed() - intake;
    let commits_work = store.commits.load(Ordering::Relaxed) - commits_intake;

    // Notices: one dispatcher, as one serve process runs, until every notice is delivered. Run
    // after the workers so each phase's rate is its own (they share the database otherwise).
    let channels: Vec<Arc<dyn Notifier>> = vec![Arc::new(NullNotifier)];
    let dispatcher = Dispatcher::new(
        Arc::clone(&dyn_store),
        channels.into(),
        Arc::clone(&cipher),
        Arc::clone(&clock),
        DispatcherSettings::default(),
    );
    // Each order's notices (provisioning, ready) are fanned out to the one channel and sent.
    let notices = 2 * opts.orders;
    let mut delivered = 0;
    while delivered < notices {
        let round = dispatcher.run_due_once().await?;
        if round.delivered == 0 && round.fanned_out == 0 {
            bail!("{delivered} of {notices} notices delivered, then none were due");
        }
        delivered += round.delivered;
    }
    let notify = started.elapsed() - intake - work;
    housekeeping.cancel();
    let commits_notify = store.commits.load(Ordering::Relaxed) - commits_intake - commits_work;

    let counts = dyn_store.state_counts().await?;
    let ready = counts
        .iter()
        .find(|(s, _)| *s == OrderState::Ready)
        .map_or(0, |(_, n)| *n);
    if ready != opts.orders as u64 {
        bail!(
            "only {ready} of {} orders ended ready: {counts:?}",
            opts.orders
        );
    }
    let bought = sim.purchases().len();
    if bought != opts.orders {
        bail!("{bought} servers bought for {} orders", opts.orders);
    }
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    Ok(PipelineResult {
        intake,
        work,
        notify,
        commits_intake,
        commits_work,
        commits_notify,
        idle_claims: store.idle_claims.load(Ordering::Relaxed),
        steps: latencies.len(),
        p50: pick(0.50),
        p99: pick(0.99),
        max: latencies.last().copied().unwrap_or_default(),
    })
}
