//! `provisioner bench throughput`: how many orders per second the whole pipeline moves through one
//! database, measured against that database's own physical bound.
//!
//! The run, in one process:
//! 1. **Raw commit rate.** `workers` tasks run a bare loop of single-row INSERT transactions on
//!    the same database and pool for a few seconds: the most commits per second it can take.
//! 2. **Pipeline.** `orders` orders are taken in (`Engine::accept`), then `workers` engines claim
//!    and work them one step at a time (each step's finishing commit claiming the worker's next
//!    order, `Engine::work_then_claim`, as serve does) against an *instant* in-process
//!    simulator (zero latencies, credentials at once) with a zero-delay policy, while one
//!    dispatcher delivers their notices to a no-op notifier. Every store write is counted, so the commits one order needs are
//!    measured, not assumed. The physical bound is `raw commits/s ÷ commits per order`.
//! 3. **Waiting orders.** A `provisioner serve` child process on a fresh database of the same
//!    kind, with this process's simulator over HTTP as its SmartVPS, takes `waiting` orders for
//!    sold-out packages: each is refused at once and then waits an hour on its persisted timer.
//!    Its RSS is read from `/proc/<pid>/status`.
//!
//! Latency is claim-to-commit per step: from the start of `Engine::claim` (or, for an order
//! claimed by the previous step's finishing commit, from that commit) to the end of
//! `Engine::work_then_claim`, whose last action is the step's final commit.

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
    AccessToken, Change, Claimed, Intake, Lease, Notice, OrderFilter, Recorded, StateCounts, Store,
    StoreError,
};

mod counting;
mod cpu;
mod db;
mod pipeline;
mod waiting;

use counting::*;
use cpu::*;
use db::*;
use pipeline::*;
use waiting::*;

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
    /// SQLite: the most writes one group commit takes; 1 gives every write a transaction of
    /// its own, for comparing with the store before group commit in the same build.
    pub group_commit: usize,
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
    let (store, raw, url) = db.open_pipeline_store(opts).await?;
    if opts.store == StoreKind::Sqlite {
        println!(
            "  group commit:         up to {} writes per SQLite transaction",
            opts.group_commit
        );
    }
    println!(
        "  raw commit rate:      {:>10.0} commits/s   (bare single-row INSERT transactions, {} tasks, {:.1} s, same pool)",
        raw,
        opts.workers,
        RAW_COMMIT_WINDOW.as_secs_f64()
    );
    let mut backends = match opts.store {
        StoreKind::Postgres => Some(BackendCpu::start(&url).await?),
        StoreKind::Sqlite => None,
    };
    let cpu_before = cpu_seconds("self").unwrap_or(0.0);
    let p = pipeline(Arc::clone(&store), opts).await?;
    let cpu_bench = cpu_seconds("self").unwrap_or(0.0) - cpu_before;
    let cpu_server = match backends.as_mut() {
        Some(b) => b.since_start().await?,
        None => None,
    };
    drop(store);
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
    let per_order_ms = |s: f64| s * 1000.0 / n;
    match cpu_server {
        Some(server) => println!(
            "  CPU per order:        {:>10.2} ms        (this process {:.2} ms, simulator and dispatcher included; PostgreSQL backends {:.2} ms; {:.1} + {:.1} CPU-s)",
            per_order_ms(cpu_bench + server),
            per_order_ms(cpu_bench),
            per_order_ms(server),
            cpu_bench,
            server
        ),
        None => println!(
            "  CPU per order:        {:>10.2} ms        (this process, simulator, dispatcher and SQLite included; {:.1} CPU-s)",
            per_order_ms(cpu_bench),
            cpu_bench
        ),
    }
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
