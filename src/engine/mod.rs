//! The worker: claims due orders under a lease and takes each one step further.
//!
//! A step is one attempt (or one reconciliation), bounded by the call timeouts; between steps an
//! order waits in the store with its `run_at`, never in memory, so a restart loses nothing and
//! ten thousand waiting orders cost no memory.
//!
//! - [`step`]: one order's step: engine, lease, order and timeline lines carried together, and
//!   the one place that writes them. What follows an outcome is decided, purely, by
//!   [`crate::policy::next`]; the step carries it out.
//! - [`buy`]: the buy phase, the purchase ledger, unknown outcomes.
//! - [`reconcile`]: settling unknown outcomes from the evidence before buying again.
//! - [`discover`]: scanning a package's addresses for a server an unknown purchase bought.
//! - [`credentials`]: the credentials phase (status polling); it never buys.
//! - [`admin`]: admin actions (retry, cancel, resolve).
//! - [`intake`]: the storefront's use case: a paid order in, its customer access token out;
//!   and the token's explicit rotation.
//! - [`catalog`]: SmartVPS's stock list kept as the package catalog intake checks against.
//! - [`renew`]: renewals (the renewal ledger, unknown outcomes settled by `ExpiryDate`),
//!   reminders and expiry of ready servers; [`renewals`]: taking renewals, cancelling service,
//!   and the sweep that brings servers nearing expiry to the engine; [`life`]: a ready server's
//!   term as one step reads it, carried by the step and worked by [`renew`].
//! - [`queries`]: the read side the web and the CLI show orders, history and the catalog through.

mod actions;
pub mod admin;
pub(crate) mod buy;
pub mod catalog;
mod credentials;
pub mod discover;
pub mod failed_queue;
pub mod intake;
mod life;
mod progress;
pub mod queries;
mod reconcile;
mod renew;
pub mod renewals;
mod resend;
mod step;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::crypto::Cipher;
use crate::crypto::token_hash_hex;
use crate::domain::{
    EntryKind, NewOrder, NoticeKind, Order, OrderId, OrderState, TimelineEntry, TransitionError,
};
use crate::policy::{OnUnknown, RetryPolicy};
use crate::provider::Provider;
use crate::store::{AccessToken, Claimed, Intake, Lease, Store, StoreError};
use secrecy::{ExposeSecret, SecretString};
use step::{Chain, Step, Then};

/// Default `worker.concurrency`: orders one process drives at once. Orders spend nearly all their
/// time waiting (persisted, not in memory), so this bounds in-flight HTTP calls, not orders.
pub const DEFAULT_CONCURRENCY: usize = 32;
/// Default `worker.poll_interval`: how often an idle worker looks for due orders.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Margin added to the computed default lease, for store round trips and clock skew.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// Worker settings that are not retry policy. The engine owns their defaults
/// ([`WorkerSettings::for_policy`]); the config file only overrides them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerSettings {
    /// Orders worked at once by this process.
    pub concurrency: usize,
    /// How long a claim lasts; longer than any step (an ipstock plus a buyvps).
    pub lease: Duration,
    /// How often to look for due work when nothing wakes the worker sooner.
    pub poll_interval: Duration,
    /// How long an order waits before asking again when its package has another order's
    /// purchase in flight.
    pub flight_wait: Duration,
    /// How long shutdown waits for a buyvps in flight (beyond the step grace) instead of
    /// cutting it off: a purchase that would have answered becomes an unknown outcome when
    /// dropped. Default: the buy timeout, the longest such a call can take.
    pub purchase_grace: Duration,
}

impl WorkerSettings {
    /// Settings derived from a policy: the lease outlasts the longest step.
    pub fn for_policy(policy: &RetryPolicy) -> Self {
        Self {
            concurrency: DEFAULT_CONCURRENCY,
            lease: Self::default_lease(policy),
            poll_interval: DEFAULT_POLL_INTERVAL,
            // 10 s against the seed's 2-minute purchases; never longer than one purchase can
            // hold the flight, so short-timeout deployments (and tests) are not slowed by it.
            flight_wait: policy.buy.timeout.min(Duration::from_secs(10)),
            purchase_grace: policy.buy.timeout,
        }
    }

    /// The lease used when `worker.lease` is not set: `2 × max(buy.timeout, status.timeout,
    /// action.timeout) + 30s`. A step is at most an ipstock call plus one buyvps (each bounded by
    /// the buy timeout), one status call, or one server action call; the 30 s cover store round
    /// trips and clock skew between workers.
    pub fn default_lease(policy: &RetryPolicy) -> Duration {
        policy
            .buy
            .timeout
            .max(policy.status.timeout)
            .max(policy.server.action.timeout)
            .saturating_mul(2)
            .saturating_add(LEASE_MARGIN)
    }

    /// The shortest lease that outlasts one step: a lease must be strictly longer than this,
    /// or another worker could take an order over while its buyvps, status or action call is
    /// still in flight, and send a second one.
    pub fn minimum_lease(policy: &RetryPolicy) -> Duration {
        policy
            .buy
            .timeout
            .saturating_mul(2)
            .max(policy.status.timeout)
            .max(policy.server.action.timeout)
    }
}

/// What went wrong in a step. The order itself is never lost: a failed step leaves it due (or
/// leased until expiry) and it is picked up again.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed or the lease was lost.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine asked for something its own rules forbid (a transition the order's state does
    /// not allow, a decision it cannot carry out): a bug in the engine, not a fault of the store.
    #[error("engine logic error: {0}")]
    Logic(String),
}

impl From<TransitionError> for EngineError {
    fn from(e: TransitionError) -> Self {
        Self::Logic(e.to_string())
    }
}

/// The leases a worker loop holds, shared with its slots: a slot registers the orders its
/// steps claim for it as soon as they are committed, so shutdown releases every lease whose step
/// it cut short. A std mutex: nothing is awaited while it is held.
#[derive(Clone, Default)]
struct Held(Arc<std::sync::Mutex<Vec<Lease>>>);

impl Held {
    fn leases(&self) -> std::sync::MutexGuard<'_, Vec<Lease>> {
        // Every change below is whole, so a poisoned lock still holds a consistent list.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn add(&self, lease: Lease) {
        self.leases().push(lease);
    }

    fn remove(&self, lease: &Lease) {
        self.leases().retain(|l| l != lease);
    }

    fn take_all(&self) -> Vec<Lease> {
        std::mem::take(&mut *self.leases())
    }
}

/// The engine: ports plus policy.
pub struct Engine {
    /// Orders, ledger, leases.
    pub(crate) store: Arc<dyn Store>,
    /// SmartVPS or the simulator.
    pub(crate) provider: Arc<dyn Provider>,
    /// All time.
    pub(crate) clock: Arc<dyn Clock>,
    /// Attempts, timeouts, waits.
    pub(crate) policy: RetryPolicy,
    /// Seals credentials before they are stored.
    pub(crate) cipher: Arc<Cipher>,
    /// This worker's name in leases.
    pub(crate) worker_id: String,
    /// Concurrency, lease, polling.
    pub(crate) settings: WorkerSettings,
    /// Woken by intake and admin actions so new work starts without waiting for a poll.
    wake: Arc<Notify>,
    /// Listeners for the late replies of timed-out buyvps calls (each bounded by the horizon),
    /// so they are accounted for and stopped with the engine.
    pub(crate) late_replies: TaskTracker,
    /// buyvps calls in flight in this process: shutdown waits for them (`purchase_grace`).
    pub(crate) buys_in_flight: Arc<AtomicUsize>,
    /// The read side over the same store and cipher, so surfaces never read the store directly.
    queries: queries::Queries,
}

impl Engine {
    /// An engine over the given ports.
    pub fn new(
        store: Arc<dyn Store>,
        provider: Arc<dyn Provider>,
        clock: Arc<dyn Clock>,
        policy: RetryPolicy,
        cipher: Arc<Cipher>,
        settings: WorkerSettings,
    ) -> Self {
        if policy.on_unknown == OnUnknown::Retry {
            tracing::warn!(
                "⚠️ UNSAFE: policy.buy.on_unknown = \"retry\": a purchase whose outcome is unknown will be retried without \
                 reconciliation, which can buy a second server. Use \"reconcile\" (the default)."
            );
        }
        let worker_id = format!("worker-{}", uuid::Uuid::now_v7().simple());
        let queries = queries::Queries::new(Arc::clone(&store)).with_cipher(Arc::clone(&cipher));
        Self {
            store,
            provider,
            clock,
            policy,
            cipher,
            worker_id,
            settings,
            wake: Arc::new(Notify::new()),
            late_replies: TaskTracker::new(),
            buys_in_flight: Arc::new(AtomicUsize::new(0)),
            queries,
        }
    }

    /// The read side: orders, their history, credentials and the catalog.
    pub fn queries(&self) -> &queries::Queries {
        &self.queries
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The cipher for stored credentials.
    pub fn cipher(&self) -> &Arc<Cipher> {
        &self.cipher
    }

    /// Accepts a paid order (idempotent on its reference) and tells the customer it is being
    /// provisioned. The worker is woken.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn accept(&self, new: NewOrder) -> Result<Intake, StoreError> {
        let now = self.clock.now();
        let order = Order::accept(new, now);
        let (_, access) = self.access_token(&order.id, 0);
        // The received line names the customer for the admin's timeline; the log gets it only at
        // debug level, so customer emails stay out of production logs.
        let received = format!(
            "📥 Order {} received: package {}, {} GB RAM",
            order.order_ref.as_str(),
            order.package_id,
            order.ram_gb.get(),
        );
        tracing::info!(order_id = %order.id, storefront = order.storefront.as_deref().unwrap_or("-"), "{received}");
        tracing::debug!(order_id = %order.id, customer = %order.customer.email, "order received for this customer");
        let entries = vec![TimelineEntry {
            at: now,
            kind: EntryKind::Progress,
            message: format!("{received}, for {}", order.customer.email),
        }];
        // No "customer notified" line here: the dispatcher writes "queued" when it hands the
        // notice to its channels, and "delivered" or "abandoned" when they answer.
        let intake = self
            .store
            .insert_order(&order, &access, &entries, &[NoticeKind::Provisioning])
            .await?;
        if matches!(intake, Intake::Created(_)) {
            self.wake.notify_one();
        }
        Ok(intake)
    }

    /// The customer access token of an order at rotation `generation`, with the digest the
    /// store keeps of it.
    pub(crate) fn access_token(
        &self,
        id: &OrderId,
        generation: u32,
    ) -> (SecretString, AccessToken) {
        let token = self.cipher.access_token(id, generation);
        let access = AccessToken {
            hash: token_hash_hex(token.expose_secret()),
            generation: Some(generation),
        };
        (token, access)
    }

    /// The worker loop's wake-up, for tasks that make an order due outside a step (a late reply).
    pub(crate) fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// Resolves when something made an order due outside the worker's own steps (intake, an
    /// admin action, a late buyvps reply): drivers that sleep until the next due order (tests,
    /// the simulation) wake on it too.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Wakes the worker loop (after an admin action made an order due).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Claims every due order and works each one step, concurrently; returns how many were
    /// worked. Tests drive the engine with this instead of sleeping.
    ///
    /// # Errors
    /// When claiming fails. Failures of single steps are logged; their orders stay safe in the store.
    pub async fn run_due_once(&self) -> Result<usize, StoreError> {
        let claimed = self
            .store
            .claim_due(
                &self.worker_id,
                self.clock.now(),
                self.settings.lease,
                usize::MAX,
            )
            .await?;
        let n = claimed.len();
        join_all(claimed.into_iter().map(|c| self.work_logged(c))).await;
        Ok(n)
    }

    /// Runs the worker until `shutdown`: claims due orders up to the concurrency limit, works
    /// them, sleeps until the next one falls due (or intake wakes it). A slot whose step ends
    /// with a releasing write claims its next order in that write's commit and works it at once,
    /// so a busy worker's claims cost no commits of their own. On shutdown it stops claiming
    /// and lets in-flight steps finish within `grace`; steps still running then are dropped and
    /// their leases released, so another worker can reconcile them at once.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        let mut tasks: JoinSet<()> = JoinSet::new();
        // Every lease a task holds, the ones its steps claimed for it included.
        let held = Held::default();
        // Another process's intake (PostgreSQL NOTIFY); a store without one never fires it.
        let remote = self
            .store
            .work_signal()
            .unwrap_or_else(|| Arc::new(Notify::new()));
        let mut next_sweep = self.clock.now();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // Listening before the claim: work made due while claiming wakes the next wait.
            let remote_work = remote.notified();
            tokio::pin!(remote_work);
            remote_work.as_mut().enable();
            if self.clock.now() >= next_sweep {
                if let Err(e) = self.sweep_terms_once().await {
                    tracing::warn!("the expiry sweep failed (tried again next time): {e}");
                }
                next_sweep = self.clock.now().plus(self.sweep_every());
            }
            let free = self.settings.concurrency.saturating_sub(tasks.len());
            if free > 0 {
                match self
                    .store
                    .claim_due(&self.worker_id, self.clock.now(), self.settings.lease, free)
                    .await
                {
                    Ok(claimed) => {
                        for c in claimed {
                            held.add(c.lease.clone());
                            let slot = Arc::clone(&self).slot(c, held.clone(), shutdown.clone());
                            tasks.spawn(slot);
                        }
                    }
                    Err(e) => tracing::error!("claiming due orders failed: {e}"),
                }
            }
            let pause = self.pause().await;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = self.wake.notified() => {}
                () = &mut remote_work => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
        tracing::info!(
            in_flight = tasks.len(),
            "worker stopping: letting in-flight steps finish"
        );
        let stopping = tokio::time::Instant::now();
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        while !tasks.is_empty() {
            tokio::select! {
                biased;
                Some(_) = tasks.join_next() => {}
                () = &mut deadline => {
                    // A buyvps cut off mid-call turns a purchase that would have answered into an
                    // unknown outcome: while one is in flight, keep waiting up to purchase_grace.
                    let purchase_deadline = stopping + self.settings.purchase_grace.max(grace);
                    if self.buys_in_flight.load(Ordering::SeqCst) == 0
                        || tokio::time::Instant::now() >= purchase_deadline
                    {
                        break;
                    }
                    tracing::info!(
                        buys_in_flight = self.buys_in_flight.load(Ordering::SeqCst),
                        "worker stopping: waiting for buyvps calls in flight (worker.purchase_grace)"
                    );
                    deadline.as_mut().reset(purchase_deadline);
                }
            }
        }
        self.late_replies.close();
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        for lease in held.take_all() {
            // The step was cut short; whatever it left (an intent without an outcome) is read as
            // unknown by whoever claims the order next.
            if let Err(e) = self.store.release(&lease).await {
                tracing::warn!(order_id = %lease.order_id, "could not release lease at shutdown: {e}");
            } else {
                tracing::info!(order_id = %lease.order_id, "lease released at shutdown");
            }
        }
    }

    /// One of [`Engine::run`]'s slots: works `claimed` one step and, until shutdown, goes on with
    /// the order that step's finishing commit claimed (at most one: the slot that frees is the
    /// one that continues), so in steady state a claim costs no commit of its own. Every lease
    /// it holds stays in `held` until its step is done, so shutdown releases what it cuts short.
    async fn slot(self: Arc<Self>, claimed: Claimed, held: Held, shutdown: CancellationToken) {
        let mut next = Some(claimed);
        while let Some(c) = next.take() {
            let (lease, id) = (c.lease.clone(), c.order.id.clone());
            let chain = Chain {
                limit: usize::from(!shutdown.is_cancelled()),
                held: Some(held.clone()),
            };
            let chained = match self.work_chained(c, chain).await {
                Ok(chained) => chained,
                Err(e) => {
                    tracing::error!(order_id = %id, "step failed, the order stays queued for another try: {e}");
                    Vec::new()
                }
            };
            held.remove(&lease);
            for c in chained {
                if next.is_none() && !shutdown.is_cancelled() {
                    next = Some(c);
                    continue;
                }
                // Stopping: let it go now, for another worker, rather than hold it until the end.
                if let Err(e) = self.store.release(&c.lease).await {
                    tracing::warn!(order_id = %c.lease.order_id, "could not release a lease claimed while stopping: {e}");
                }
                held.remove(&c.lease);
            }
        }
    }

    async fn pause(&self) -> Duration {
        let poll = self.settings.poll_interval;
        match self.store.next_due().await {
            Ok(Some(at)) => self.clock.real(at.since(self.clock.now())).min(poll),
            _ => poll,
        }
    }

    /// Claims up to `limit` due orders for this worker without working them (for custom drivers
    /// such as the deterministic simulation, which decides when a worker "crashes").
    ///
    /// # Errors
    /// When the store fails.
    pub async fn claim(&self, limit: usize) -> Result<Vec<Claimed>, StoreError> {
        self.store
            .claim_due(
                &self.worker_id,
                self.clock.now(),
                self.settings.lease,
                limit,
            )
            .await
    }

    /// Works one claimed order one step (see [`Engine::claim`]).
    ///
    /// # Errors
    /// When the store fails or the lease was lost; the order stays safe in the store.
    pub async fn work_one(&self, claimed: Claimed) -> Result<(), EngineError> {
        self.work(claimed).await
    }

    /// Works one claimed order one step, as [`Engine::work_one`], and has the step's last write
    /// (the one that releases the lease) claim up to `next` due orders for this worker in the
    /// same commit: the caller works them next, and the claim costs no commit of its own.
    /// Writes that keep the lease are unchanged. Returns nothing when the step ended without
    /// such a write (its lease was lost, say): the caller claims as usual.
    ///
    /// # Errors
    /// As [`Engine::work_one`]; orders the step had claimed before failing are released first.
    pub async fn work_then_claim(
        &self,
        claimed: Claimed,
        next: usize,
    ) -> Result<Vec<Claimed>, EngineError> {
        let chain = Chain {
            limit: next,
            held: None,
        };
        self.work_chained(claimed, chain).await
    }

    /// This worker's name in leases.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    async fn work_logged(&self, claimed: Claimed) {
        let id = claimed.order.id.clone();
        if let Err(e) = self.work(claimed).await {
            tracing::error!(order_id = %id, "step failed, the order stays queued for another try: {e}");
        }
    }

    /// Takes one order one step further (continuing at once from a purchase to the first status
    /// call, as the seed does).
    async fn work(&self, claimed: Claimed) -> Result<(), EngineError> {
        let unchained = Chain {
            limit: 0,
            held: None,
        };
        self.work_chained(claimed, unchained).await.map(drop)
    }

    /// [`Engine::work`] whose releasing write claims the worker's next orders (see [`Chain`]).
    /// When the step fails after that write, the orders it claimed are released (and dropped
    /// from `chain.held`): the caller gets the error and nothing to work.
    async fn work_chained(
        &self,
        claimed: Claimed,
        chain: Chain,
    ) -> Result<Vec<Claimed>, EngineError> {
        let held = chain.held.clone();
        let mut step = Step::new(self, claimed).chaining(chain);
        let worked = Self::step(&mut step).await;
        // A step that failed between a buyvps reply and the write that records it.
        step.flush_pending().await;
        let chained = step.take_chained();
        if let Err(e) = worked {
            for c in chained {
                if let Err(e) = self.store.release(&c.lease).await {
                    tracing::warn!(order_id = %c.lease.order_id, "could not release a lease claimed with a failed step: {e}");
                }
                if let Some(held) = &held {
                    held.remove(&c.lease);
                }
            }
            return Err(e);
        }
        Ok(chained)
    }

    async fn step(step: &mut Step<'_>) -> Result<(), EngineError> {
        step.begin();
        if step.order.state == OrderState::Buying && step.buy().await? == Then::Stop {
            return Ok(());
        }
        if step.order.state == OrderState::AwaitingCredentials {
            step.credentials().await?;
            return Ok(());
        }
        if matches!(
            step.order.state,
            OrderState::Ready | OrderState::InstallingOs
        ) {
            step.server_work().await?;
            return Ok(());
        }
        step.let_go().await?;
        Ok(())
    }
}
