//! `provisioner bench throughput`: how many orders per second the whole pipeline moves through one
//! database, measured against that database's own physical bound.
//!
//! The run, in one process:
//! 1. **Raw commit rate.** `workers` tasks run a bare loop of single-row INSERT transactions on
//!    the same database and pool for a few seconds: the most commits per second it can take.
//! 2. **Pipeline.** `orders` orders are taken in (`Engine::accept`), then `workers` engines claim
//!    and work them one step at a time against an *instant* in-process simulator (zero latencies,
//!    credentials at once) with a zero-delay policy, while one dispatcher delivers their notices
//!    to a no-op notifier. Every store write is counted, so the commits one order needs are
//!    measured, not assumed. The physical bound is `raw commits/s ÷ commits per order`.
//! 3. **Waiting orders.** A `provisioner serve` child process on a fresh database of the same
//!    kind, with this process's simulator over HTTP as its SmartVPS, takes `waiting` orders for
//!    sold-out packages: each is refused at once and then waits an hour on its persisted timer.
//!    Its RSS is read from `/proc/<pid>/status`.
//!
//! Latency is claim-to-commit per step: from the start of `Engine::claim` to the end of
//! `Engine::work_one`, whose last action is the step's final commit.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;

use crate::clock::{Clock, SystemClock, Timestamp};
use crate::crypto::Cipher;
use crate::domain::order::CustomerRequest;
use crate::domain::{
    NewOrder, NoticeKind, Order, OrderId, OrderRequest, OrderState, PackageId, Purchase,
    PurchaseIntent, PurchaseOutcome, TimelineEntry,
};
use crate::engine::{Engine, WorkerSettings};
use crate::notify::{Dispatcher, DispatcherSettings, Event, Notifier, NotifyError};
use crate::policy::{OnUnknown, PhasePolicy, RetryPolicy};
use crate::simulator::{PackageDefaults, PackageSpec, Simulator};
use crate::store::postgres::{PostgresStore, with_database};
use crate::store::sqlite::SqliteStore;
use crate::store::{
    Change, Claimed, Flight, Intake, Lease, Notice, OrderFilter, Recorded, StateCounts, Store,
    StoreError, redact_url,
};

/// Where `--store postgres` creates its fresh databases when no `--database-url` is given.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Packages in the instant world. Single flight serializes purchases per package, so the
/// benchmark spreads orders over many packages, as a reseller's real traffic is spread.
const PACKAGES: u32 = 256;
/// How long the bare insert loop runs.
const RAW_COMMIT_WINDOW: Duration = Duration::from_secs(3);
/// Sold-out packages the serve child's SmartVPS sells: every buy attempt is refused before any
/// buyvps, so orders go straight to a wait. Many of them, because each package's single flight
/// lets one order at a time through its attempt.
const SOLD_OUT_PACKAGES: u32 = 64;

/// Which database backend to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A fresh PostgreSQL database, created for the run and dropped after it.
    Postgres,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The backend.
    pub store: StoreKind,
    /// Orders through the pipeline.
    pub orders: usize,
    /// Concurrent workers (engines), also the concurrency of intake and of the insert loop.
    pub workers: usize,
    /// PostgreSQL server (any database on it) where fresh databases are created.
    pub database_url: Option<String>,
    /// Orders the serve child holds waiting on timers (0 skips that measurement).
    pub waiting: usize,
}

/// Runs the benchmark and prints its report.
///
/// # Errors
/// Database, simulator or child-process failures, or an order that did not end ready.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    if opts.orders == 0 || opts.workers == 0 {
        bail!("--orders and --workers must be at least 1");
    }
    let mut db = BenchDb::create(&opts).await?;
    let result = run_on(&opts, &mut db).await;
    db.drop_all().await;
    result
}

async fn run_on(opts: &Options, db: &mut BenchDb) -> anyhow::Result<()> {
    println!(
        "bench throughput: store={:?} orders={} workers={} (instant simulator, zero-delay policy, {PACKAGES} packages)",
        opts.store, opts.orders, opts.workers
    );
    let (store, raw) = db.open_pipeline_store(opts.workers).await?;
    println!(
        "  raw commit rate:      {:>10.0} commits/s   (bare single-row INSERT transactions, {} tasks, {:.1} s, same pool)",
        raw,
        opts.workers,
        RAW_COMMIT_WINDOW.as_secs_f64()
    );
    let p = pipeline(store, opts).await?;
    let n = opts.orders as f64;
    let per = |commits: u64| commits as f64 / n;
    let (c_in, c_work, c_note) = (
        per(p.commits_intake),
        per(p.commits_work),
        per(p.commits_notify),
    );
    println!(
        "  commits per order:    {:>10.2}            (counted: intake {c_in:.2} + workers {c_work:.2} + notices {c_note:.2}; {} empty claim polls not counted)",
        c_in + c_work + c_note,
        p.idle_claims
    );
    println!(
        "  intake:               {:>10.1} orders/s   ({} orders in {:.2} s, {} concurrent streams)",
        n / p.intake.as_secs_f64(),
        opts.orders,
        p.intake.as_secs_f64(),
        opts.workers
    );
    let provisioning = p.intake + p.work;
    let rate = n / provisioning.as_secs_f64();
    let bound = raw / (c_in + c_work);
    println!(
        "  provisioning:         {rate:>10.1} orders/s   (intake to ready: {:.2} s; bound {bound:.1} = raw ÷ {:.2} commits; {:.2} of the bound, target >= 0.25)",
        provisioning.as_secs_f64(),
        c_in + c_work,
        rate / bound
    );
    println!(
        "  notice delivery:      {:>10.1} notices/s  ({} notices in {:.2} s by one dispatcher, one at a time, as one serve process sends them)",
        (2.0 * n) / p.notify.as_secs_f64(),
        2 * opts.orders,
        p.notify.as_secs_f64()
    );
    let whole = provisioning + p.notify;
    let whole_rate = n / whole.as_secs_f64();
    let whole_bound = raw / (c_in + c_work + c_note);
    println!(
        "  whole pipeline:       {whole_rate:>10.1} orders/s   (intake to last notice: {:.2} s; bound {whole_bound:.1} = raw ÷ {:.2} commits; {:.2} of the bound)",
        whole.as_secs_f64(),
        c_in + c_work + c_note,
        whole_rate / whole_bound
    );
    let pipeline = p;
    println!(
        "  claim-to-commit:      p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} steps",
        ms(pipeline.p50),
        ms(pipeline.p99),
        ms(pipeline.max),
        pipeline.steps
    );
    println!(
        "  peak RSS (bench):     {:>10.1} MB         (VmHWM of this process: simulator, engines, pool)",
        mb(peak_rss_kb("self"))
    );
    if opts.waiting > 0 {
        let waiting = waiting_rss(opts, db).await?;
        println!(
            "  serve, {} waiting:  RSS {:.1} MB (peak {:.1} MB; {:.1} MB before any order; target < 64 MB)",
            opts.waiting,
            mb(waiting.rss_kb),
            mb(waiting.peak_kb),
            mb(waiting.idle_kb)
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

// ---------------------------------------------------------------------------------------------
// The databases.

/// The fresh databases (or files) of one run.
struct BenchDb {
    kind: StoreKind,
    /// SQLite files live here; removed with it.
    dir: tempfile::TempDir,
    /// PostgreSQL: the URL fresh databases are created from.
    admin_url: String,
    /// PostgreSQL databases to drop at the end.
    created: Vec<String>,
}

impl BenchDb {
    async fn create(opts: &Options) -> anyhow::Result<Self> {
        let admin_url = match (opts.store, &opts.database_url) {
            (StoreKind::Sqlite, Some(_)) => {
                bail!("--database-url is for --store postgres; SQLite runs on a temporary file")
            }
            (_, Some(url)) => url.clone(),
            (_, None) => DEFAULT_POSTGRES_URL.to_string(),
        };
        Ok(Self {
            kind: opts.store,
            dir: tempfile::tempdir().context("creating a temporary directory")?,
            admin_url,
            created: Vec::new(),
        })
    }

    /// A URL for a fresh, empty database (or file) named after `purpose`.
    async fn fresh(&mut self, purpose: &str) -> anyhow::Result<String> {
        match self.kind {
            StoreKind::Sqlite => Ok(format!(
                "sqlite://{}",
                self.dir.path().join(format!("{purpose}.db")).display()
            )),
            StoreKind::Postgres => {
                use sqlx::Connection;
                let name = format!(
                    "provisioner_bench_{purpose}_{}",
                    uuid::Uuid::now_v7().simple()
                );
                let mut conn = sqlx::PgConnection::connect(&self.admin_url)
                    .await
                    .with_context(|| format!("connecting to {}", redact_url(&self.admin_url)))?;
                // The name is ours (letters, digits, underscores): safe to format in.
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .context("creating the benchmark database")?;
                let _ = conn.close().await;
                self.created.push(name.clone());
                Ok(with_database(&self.admin_url, &name))
            }
        }
    }

    /// The pipeline's store on a fresh database, and that database's raw commit rate.
    async fn open_pipeline_store(
        &mut self,
        workers: usize,
    ) -> anyhow::Result<(Arc<dyn Store>, f64)> {
        let url = self.fresh("pipeline").await?;
        Ok(match self.kind {
            StoreKind::Sqlite => {
                let store = SqliteStore::connect(&url).await?;
                let raw = raw_commit_rate_sqlite(&store, workers).await?;
                (Arc::new(store), raw)
            }
            StoreKind::Postgres => {
                let store = PostgresStore::connect(&url).await?;
                let raw = raw_commit_rate_postgres(store.pool(), workers).await?;
                (Arc::new(store), raw)
            }
        })
    }

    async fn drop_all(&mut self) {
        use sqlx::Connection;
        if self.created.is_empty() {
            return;
        }
        let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin_url).await else {
            eprintln!("could not reconnect to drop the benchmark databases");
            return;
        };
        for name in self.created.drain(..) {
            let dropped = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await;
            if let Err(e) = dropped {
                eprintln!("could not drop {name}: {e}");
            }
        }
        let _ = conn.close().await;
    }
}

/// Runs `insert` from `tasks` concurrent loops for [`RAW_COMMIT_WINDOW`]; commits per second.
async fn raw_loop<F, Fut>(tasks: usize, insert: F) -> anyhow::Result<f64>
where
    F: Fn(i64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), sqlx::Error>> + Send,
{
    let started = Instant::now();
    let deadline = started + RAW_COMMIT_WINDOW;
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let insert = insert.clone();
        set.spawn(async move {
            let mut n: u64 = 0;
            while Instant::now() < deadline {
                insert(i64::try_from(t).unwrap_or(0)).await?;
                n += 1;
            }
            Ok::<u64, sqlx::Error>(n)
        });
    }
    let mut total = 0;
    while let Some(done) = set.join_next().await {
        total += done.context("insert task")??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

async fn raw_commit_rate_postgres(pool: &sqlx::PgPool, tasks: usize) -> anyhow::Result<f64> {
    sqlx::query(
        "CREATE TABLE bench_commits (id BIGSERIAL PRIMARY KEY, task BIGINT NOT NULL, at BIGINT NOT NULL, note TEXT NOT NULL)",
    )
    .execute(pool)
    .await?;
    let pool = pool.clone();
    raw_loop(tasks, move |task| {
        let pool = pool.clone();
        async move {
            sqlx::query("INSERT INTO bench_commits (task, at, note) VALUES ($1, $2, $3)")
                .bind(task)
                .bind(SystemClock.now().millis())
                .bind("a row about as wide as a timeline line")
                .execute(&pool)
                .await
                .map(|_| ())
        }
    })
    .await
}

/// SQLite's raw rate, the better of two ways to write: every task's INSERTs taking turns on the
/// store's one writer connection (how the store writes) and spread over the readers' pool of 8
/// connections (SQLite's own locking). The bound is the higher of the two.
async fn raw_commit_rate_sqlite(store: &SqliteStore, tasks: usize) -> anyhow::Result<f64> {
    const INSERT: &str = "INSERT INTO bench_commits (task, at, note) VALUES (?, ?, ?)";
    const NOTE: &str = "a row about as wide as a timeline line";
    sqlx::query(
        "CREATE TABLE bench_commits (id INTEGER PRIMARY KEY AUTOINCREMENT, task INTEGER NOT NULL, at INTEGER NOT NULL, note TEXT NOT NULL)",
    )
    .execute(store.pool())
    .await?;
    let writer = {
        let store = store.clone();
        raw_loop(tasks, move |task| {
            let store = store.clone();
            async move {
                let mut turn = store
                    .write_turn()
                    .await
                    .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
                sqlx::query(INSERT)
                    .bind(task)
                    .bind(SystemClock.now().millis())
                    .bind(NOTE)
                    .execute(&mut *turn)
                    .await
                    .map(|_| ())
            }
        })
        .await?
    };
    println!("  raw commits via the one writer connection: {writer:>8.0} commits/s");
    let pool = store.pool().clone();
    let pooled = raw_loop(tasks, move |task| {
        let pool = pool.clone();
        async move {
            sqlx::query(INSERT)
                .bind(task)
                .bind(SystemClock.now().millis())
                .bind(NOTE)
                .execute(&pool)
                .await
                .map(|_| ())
        }
    })
    .await?;
    println!("  raw commits via a pool of 8 connections:   {pooled:>8.0} commits/s");
    Ok(writer.max(pooled))
}

// ---------------------------------------------------------------------------------------------
// The pipeline.

struct PipelineResult {
    /// Taking the orders in.
    intake: Duration,
    /// Workers, from the first claim until every order is ready.
    work: Duration,
    /// One dispatcher delivering every notice.
    notify: Duration,
    commits_intake: u64,
    commits_work: u64,
    commits_notify: u64,
    idle_claims: u64,
    steps: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

/// The zero-delay policy: every wait is 0, timeouts are positive (validation requires it).
fn zero_delay_policy() -> RetryPolicy {
    let phase = PhasePolicy {
        attempts: 3,
        timeout: Duration::from_secs(5),
        delays: vec![Duration::ZERO, Duration::ZERO],
    };
    RetryPolicy {
        buy: phase.clone(),
        status: phase,
        on_unknown: OnUnknown::Reconcile,
    }
}

/// An instant SmartVPS: zero latencies, credentials at once, enough stock for every order.
fn instant_world(orders: usize) -> anyhow::Result<Simulator> {
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
            },
        )?;
    }
    sim.set_ipstock_latency(Duration::ZERO);
    Ok(sim)
}

fn request(i: usize) -> OrderRequest {
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
struct NullNotifier;

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

async fn pipeline(inner: Arc<dyn Store>, opts: &Options) -> anyhow::Result<PipelineResult> {
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

    // Workers: claim one due order, work it one step; stop when no order is active.
    let mut workers = tokio::task::JoinSet::new();
    for engine in &engines {
        let engine = Arc::clone(engine);
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let t = Instant::now();
                let claimed = engine.claim(1).await?;
                let Some(c) = claimed.into_iter().next() else {
                    match engine.store().next_due().await? {
                        None => return Ok::<_, anyhow::Error>(latencies),
                        // Another worker holds the last orders, or an order waits out a flight:
                        // look again shortly.
                        Some(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                    continue;
                };
                engine.work_one(c).await?;
                latencies.push(t.elapsed());
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

// ---------------------------------------------------------------------------------------------
// A serve process with orders waiting on timers.

struct WaitingRss {
    idle_kb: u64,
    rss_kb: u64,
    peak_kb: u64,
}

/// Kills the child when dropped, however the measurement ends.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn waiting_rss(opts: &Options, db: &mut BenchDb) -> anyhow::Result<WaitingRss> {
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
    cmd.env("PROVISIONER_DATABASE_URL", &url)
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
        let (http, api, next, n) = (
            http.clone(),
            api.clone(),
            Arc::clone(&next),
            opts.waiting as u64,
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
                let r = http
                    .post(format!("{api}/api/v1/orders"))
                    .json(&body)
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

fn status_field_kb(pid: &str, field: &str) -> u64 {
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
fn rss_kb(pid: &str) -> u64 {
    status_field_kb(pid, "VmRSS:")
}

/// Peak resident set size, in kB (`self` or a pid).
fn peak_rss_kb(pid: &str) -> u64 {
    status_field_kb(pid, "VmHWM:")
}

// ---------------------------------------------------------------------------------------------
// Counting commits.

/// Counts the store's write transactions (each call below that writes is one commit), so
/// "commits per order" is measured. Reads pass through uncounted.
struct Counting {
    inner: Arc<dyn Store>,
    commits: AtomicU64,
    /// Claims that found nothing: an UPDATE matching no row writes nothing.
    idle_claims: AtomicU64,
}

impl Counting {
    fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            commits: AtomicU64::new(0),
            idle_claims: AtomicU64::new(0),
        }
    }

    fn commit(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Store for Counting {
    async fn insert_order(
        &self,
        order: &Order,
        entries: &[TimelineEntry],
        notices: &[NoticeKind],
    ) -> Result<Intake, StoreError> {
        self.commit();
        self.inner.insert_order(order, entries, notices).await
    }
    async fn order(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        self.inner.order(id).await
    }
    async fn orders(&self, filter: &OrderFilter) -> Result<Vec<Order>, StoreError> {
        self.inner.orders(filter).await
    }
    async fn state_counts(&self) -> Result<StateCounts, StoreError> {
        self.inner.state_counts().await
    }
    async fn timeline(&self, id: &OrderId) -> Result<Vec<TimelineEntry>, StoreError> {
        self.inner.timeline(id).await
    }
    async fn purchases(&self, id: &OrderId) -> Result<Vec<Purchase>, StoreError> {
        self.inner.purchases(id).await
    }
    async fn credentials(&self, id: &OrderId) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.credentials(id).await
    }
    async fn claim_due(
        &self,
        worker: &str,
        now: Timestamp,
        lease_for: Duration,
        limit: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        let claimed = self.inner.claim_due(worker, now, lease_for, limit).await?;
        if claimed.is_empty() {
            self.idle_claims.fetch_add(1, Ordering::Relaxed);
        } else {
            self.commit();
        }
        Ok(claimed)
    }
    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        self.inner.next_due().await
    }
    async fn save(&self, lease: &Lease, order: &Order, change: Change) -> Result<(), StoreError> {
        self.commit();
        self.inner.save(lease, order, change).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.commit();
        self.inner.release(lease).await
    }
    async fn acquire_flight(
        &self,
        lease: &Lease,
        package: PackageId,
    ) -> Result<Flight, StoreError> {
        self.commit();
        self.inner.acquire_flight(lease, package).await
    }
    async fn begin_purchase(
        &self,
        lease: &Lease,
        order: &Order,
        intent: &PurchaseIntent,
        entries: &[TimelineEntry],
    ) -> Result<i64, StoreError> {
        self.commit();
        self.inner
            .begin_purchase(lease, order, intent, entries)
            .await
    }
    async fn record_outcome(
        &self,
        purchase_id: i64,
        outcome: &PurchaseOutcome,
        at: Timestamp,
    ) -> Result<Recorded, StoreError> {
        self.commit();
        self.inner.record_outcome(purchase_id, outcome, at).await
    }
    async fn owner_of(&self, ip: Ipv4Addr) -> Result<Option<OrderId>, StoreError> {
        self.inner.owner_of(ip).await
    }
    async fn admin_save(
        &self,
        order: &Order,
        expected_updated_at: Timestamp,
        now: Timestamp,
        change: Change,
    ) -> Result<(), StoreError> {
        self.commit();
        self.inner
            .admin_save(order, expected_updated_at, now, change)
            .await
    }
    async fn due_notices(&self, now: Timestamp, limit: usize) -> Result<Vec<Notice>, StoreError> {
        self.inner.due_notices(now, limit).await
    }
    async fn notice_delivered(&self, id: i64, at: Timestamp) -> Result<(), StoreError> {
        self.commit();
        self.inner.notice_delivered(id, at).await
    }
    async fn notice_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        self.commit();
        self.inner.notice_failed(id, error, retry_at).await
    }
    async fn fan_out(
        &self,
        deliveries: &[crate::store::NewDelivery],
        notices: &[i64],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.commit();
        self.inner.fan_out(deliveries, notices, now).await
    }
    async fn add_deliveries(
        &self,
        deliveries: &[crate::store::NewDelivery],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.commit();
        self.inner.add_deliveries(deliveries, now).await
    }
    async fn claim_deliveries(
        &self,
        worker: &str,
        now: Timestamp,
        claim_for: Duration,
        limit: usize,
    ) -> Result<Vec<crate::store::Delivery>, StoreError> {
        self.commit();
        self.inner
            .claim_deliveries(worker, now, claim_for, limit)
            .await
    }
    async fn finish_delivery(
        &self,
        delivery: &crate::store::Delivery,
        result: &crate::store::DeliveryResult,
    ) -> Result<bool, StoreError> {
        self.commit();
        self.inner.finish_delivery(delivery, result).await
    }
    async fn outbox_backlog(&self) -> Result<u64, StoreError> {
        self.inner.outbox_backlog().await
    }
    async fn maintain(&self) -> Result<(), StoreError> {
        self.inner.maintain().await
    }
    async fn replace_catalog(
        &self,
        packages: &[crate::domain::CatalogPackage],
    ) -> Result<(), StoreError> {
        self.commit();
        self.inner.replace_catalog(packages).await
    }
    async fn catalog(&self) -> Result<Vec<crate::domain::CatalogPackage>, StoreError> {
        self.inner.catalog().await
    }
    async fn order_by_ref(
        &self,
        order_ref: &crate::domain::OrderRef,
    ) -> Result<Option<Order>, StoreError> {
        self.inner.order_by_ref(order_ref).await
    }
    async fn set_access_token_hash(&self, id: &OrderId, hash: &str) -> Result<(), StoreError> {
        self.commit();
        self.inner.set_access_token_hash(id, hash).await
    }
    async fn access_token_hash(&self, id: &OrderId) -> Result<Option<String>, StoreError> {
        self.inner.access_token_hash(id).await
    }
}
