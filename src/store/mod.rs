//! The `Store` port: orders, their timelines, the purchase ledger, per-package single flight,
//! worker leases and the notice outbox.
//!
//! Every write a worker makes is *fenced* by its lease token: a worker whose lease expired and was
//! taken over gets [`StoreError::LeaseLost`] and changes nothing. Ledger outcomes are the one
//! exception: they are facts about the world, recorded first-writer-wins by purchase id, so a stale
//! worker's late reply is kept as evidence rather than lost.
//!
//! Implementations: [`sqlite::SqliteStore`] (the embedded default, one process),
//! [`postgres::PostgresStore`] (many processes on many machines) and [`memory::MemoryStore`]
//! (virtual-time tests and the deterministic simulation). All three pass the same suite in
//! `tests/it/store_suite.rs`; the catalog and access-token methods also run through
//! `store::tests`. [`open`] picks the database backend from the URL's scheme. The two SQL
//! backends share their row decoding and every statement that reads the same on both (`sql`).

pub mod memory;
pub mod postgres;
mod sql;
pub mod sqlite;

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::clock::Timestamp;
use crate::domain::CompleteScan;
use crate::domain::{
    CatalogPackage, Discovered, NoticeKind, Order, OrderId, OrderRef, OrderState, PackageId, Phase,
    Purchase, PurchaseId, PurchaseIntent, PurchaseOutcome, Resolution, TimelineEntry,
};
use crate::domain::{Renewal, ServerAction, ServerFacts, ServerTerm};

/// What can go wrong in a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The worker's lease expired and another worker took the order over; nothing was written.
    #[error("lease lost on order {0}: another worker owns it now")]
    LeaseLost(OrderId),
    /// The order is being worked (or its state changed) so an admin change cannot apply now.
    #[error("order {0} changed concurrently; try again")]
    Conflict(OrderId),
    /// A row could not be read back into the domain (corrupt or from a newer version).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The database itself failed.
    #[error("database error: {0}")]
    Database(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e.to_string())
    }
}

/// Every order `filter` matches, at most `max` (its paging replaced): the store pages order
/// lists, so this reads page after page of [`ORDER_PAGE`] until one comes back short.
///
/// # Errors
/// When the store fails.
pub async fn all_orders(
    store: &dyn Store,
    filter: &OrderFilter,
    max: usize,
) -> Result<Vec<Order>, StoreError> {
    let mut out = Vec::new();
    loop {
        let page = OrderFilter {
            limit: Some(ORDER_PAGE),
            offset: Some(out.len()),
            ..filter.clone()
        };
        let batch = store.orders(&page).await?;
        let short = batch.len() < ORDER_PAGE;
        out.extend(batch);
        if short || out.len() >= max {
            out.truncate(max);
            return Ok(out);
        }
    }
}

/// The page size [`all_orders`] reads with.
pub const ORDER_PAGE: usize = 500;

/// How often `serve` runs [`Store::maintain`].
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(30);

/// Runs [`Store::maintain`] every [`MAINTENANCE_INTERVAL`] until `shutdown`; a failure is logged
/// and tried again next time. `serve` runs it, and so does the throughput benchmark.
pub async fn maintain_until(store: Arc<dyn Store>, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(MAINTENANCE_INTERVAL) => {
                if let Err(e) = store.maintain().await {
                    tracing::warn!(
                        "database housekeeping failed (tried again in {}s): {e}",
                        MAINTENANCE_INTERVAL.as_secs()
                    );
                }
            }
        }
    }
}

/// Opens the store named by `url`: `sqlite:` for the embedded SQLite file, `postgres:` or
/// `postgresql:` for a PostgreSQL server shared by several processes. Migrations are applied.
///
/// # Errors
/// An unsupported scheme, or the backend's connection or migration failure. No message carries
/// the URL's password.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    match Backend::of(url) {
        Some(Backend::Sqlite) => Ok(Arc::new(sqlite::SqliteStore::connect(url).await?)),
        Some(Backend::Postgres) => Ok(Arc::new(postgres::PostgresStore::connect(url).await?)),
        None => Err(StoreError::Database(format!(
            "unsupported database url {}: use sqlite: or postgres:",
            crate::redact::url(url, crate::redact::User::Shown)
        ))),
    }
}

/// The database backends, told apart by the URL's scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite:`: one file, one process.
    Sqlite,
    /// `postgres:` / `postgresql:`: one server, many processes.
    Postgres,
}

impl Backend {
    /// The backend a URL names, if any.
    pub fn of(url: &str) -> Option<Self> {
        let scheme = url.trim().split(':').next()?.to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(Self::Sqlite),
            "postgres" | "postgresql" => Some(Self::Postgres),
            _ => None,
        }
    }
}

/// An order's customer access token as stored: its digest and which generation it is. The
/// token itself is never stored; it is derived again from the order id and generation
/// ([`crate::crypto::Cipher::access_token`]) when an intake replay must hand it out.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// SHA-256 (hex) of the token: what a presented token is checked against.
    pub hash: String,
    /// The rotation the token was derived for (0 at intake). `None`: a random token issued
    /// before tokens were derived, which cannot be handed out again (only rotated).
    pub generation: Option<u32>,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// A worker's claim on an order, until `expires_at`. `token` fences every write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The order.
    pub order_id: OrderId,
    /// Which worker holds it.
    pub worker: String,
    /// Fencing token: incremented on every claim and every admin change.
    pub token: i64,
    /// When the claim lapses and another worker may take the order.
    pub expires_at: Timestamp,
}

/// A claimed order.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// The lease.
    pub lease: Lease,
    /// The order as it was at claim time.
    pub order: Order,
}

/// What intake did with a request.
#[derive(Clone, Debug)]
pub enum Intake {
    /// A new order was stored.
    Created(Order),
    /// The same request was seen before: here is that order.
    Existing(Order),
    /// The reference is taken by an order with different contents.
    Conflict(Order),
}

/// Everything a worker step writes besides the order row itself, committed atomically with it.
#[derive(Clone, Debug, Default)]
pub struct Change {
    /// Timeline lines to append.
    pub entries: Vec<TimelineEntry>,
    /// Notices to put in the outbox.
    pub notices: Vec<NoticeKind>,
    /// Encrypted credentials to save.
    pub credentials: Option<Vec<u8>>,
    /// Settle an unknown purchase.
    pub resolve: Option<(PurchaseId, Resolution)>,
    /// The package's free count read by the reconciliation that settles `resolve`, kept with it.
    pub stock_after: Option<u32>,
    /// An action on the order's server to insert (`id` 0) or update, in the same transaction.
    pub action: Option<ServerAction>,
    /// What status just said about the order's server.
    pub facts: Option<ServerFacts>,
    /// A renewal's progress to record (it is stored by [`Store::request_renewal`]).
    pub renewal: Option<Renewal>,
    /// What the engine keeps about the server's term (reminder sent, service cancelled).
    pub term: Option<ServerTerm>,
    /// The newest renewal id the writing step saw (`None`: it read none). A ready order is
    /// kept due when a newer one is pending (with `None`: any, when it is written idle), so a
    /// renewal taken during the step is not buried under the step's later `run_at`.
    pub renewals_seen: Option<i64>,
    /// Keep the lease after this write (the step goes on); otherwise it is released.
    pub keep_lease: bool,
    /// Give up the order's single flight on its package (its purchase is settled). A flight is
    /// also released whenever the order leaves the buying state.
    pub release_flight: bool,
    /// A buyvps reply to record in the ledger in the same transaction, before the order is
    /// written: the outcome and what follows from it ("bought, flight released") cost one
    /// commit, not two. Recorded first-writer-wins and not fenced, as
    /// [`Store::record_outcome`]: when the fence fails the outcome is still committed and the
    /// write is [`StoreError::LeaseLost`]; when the purchase already had an outcome (a takeover
    /// marked it unknown), a success is kept as its late address, the order is not written, and
    /// the write is [`StoreError::LeaseLost`] too. Only [`Store::save`] records it.
    pub outcome: Option<OutcomeRecord>,
}

/// A purchase outcome recorded with a worker's write (see [`Change::outcome`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutcomeRecord {
    /// The ledger row.
    pub purchase_id: PurchaseId,
    /// What buyvps answered.
    pub outcome: PurchaseOutcome,
    /// When the answer came.
    pub at: Timestamp,
}

/// A package's single flight as read before its stock list: who holds the flight, and the
/// newest purchase of the package. A buy attempt passes it back to
/// [`Store::begin_purchase_in_flight`], which takes the flight only if no other order's purchase
/// of the package went out since: then no purchase of ours was in flight while the stock was
/// read, and the reading is clean evidence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlightState {
    /// The order holding the flight, if any.
    pub holder: Option<OrderId>,
    /// The newest purchase of the package (any order), if any.
    pub last_purchase: Option<PurchaseId>,
}

/// What [`Store::begin_purchase_in_flight`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begun {
    /// The flight is the order's and the intent is committed: buyvps may be sent.
    Purchase(PurchaseId),
    /// Another order holds the package's flight; nothing was written.
    HeldBy(OrderId),
    /// The flight is free, but another order's purchase of the package went out after the
    /// [`FlightState`] was read, so the stock read may count it; nothing was written.
    Moved,
}

/// What happened when a purchase outcome was recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The outcome is now the purchase's outcome.
    Recorded,
    /// The purchase already had an outcome (it was marked unknown after its worker was presumed
    /// lost); a late success was kept as `late_ip`.
    AlreadyDecided,
}

/// How a request for an action on a server went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionRequest {
    /// Stored, and the order made due.
    Created(ServerAction),
    /// No such order.
    NoOrder,
    /// The order is not ready: its server cannot take actions yet (or any more).
    NotReady(OrderState),
    /// Another action on this server is still pending.
    Busy(ServerAction),
    /// The server's hourly allowance is used up; another may be asked for from `retry_at`.
    TooMany {
        /// When the oldest action in the window leaves it.
        retry_at: Timestamp,
    },
}

/// How a paid (or admin) renewal was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RenewalRequest {
    /// Stored, and the order made due.
    Created(Renewal),
    /// The reference was taken before, for this order: here is that renewal (a replay).
    Existing(Renewal),
    /// The reference names a renewal of another order.
    Conflict(Renewal),
    /// No such order.
    NoOrder,
    /// The order is not ready: there is no live server to renew.
    NotRenewable(OrderState),
}

/// A ready server and the `ExpiryDate` status last gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Expiring {
    /// The order.
    pub order_id: OrderId,
    /// `ExpiryDate` (`YYYY-MM-DD`).
    pub expiry: String,
}

/// Filters for listing orders.
#[derive(Clone, Debug, Default)]
pub struct OrderFilter {
    /// Only this state.
    pub state: Option<OrderState>,
    /// Only this package.
    pub package: Option<PackageId>,
    /// Created at or after.
    pub created_from: Option<Timestamp>,
    /// Created before.
    pub created_to: Option<Timestamp>,
    /// Only failed orders that failed in this phase (a credentials-phase failure owns a server).
    pub phase: Option<Phase>,
    /// Free-text search, already trimmed and non-empty: a substring of the order_ref, the
    /// customer email, the server address or the order id (so the dashboard's short id finds
    /// its order too), ignoring ASCII case as SQLite's `LOWER` does.
    pub search: Option<String>,
    /// Page size (default 50, at most 500).
    pub limit: Option<usize>,
    /// Rows to skip.
    pub offset: Option<usize>,
    /// Only orders whose id ends with this (lowercase hex and dashes): the short id the
    /// dashboard shows, which the CLI takes wherever it takes an order.
    pub id_suffix: Option<String>,
}

impl OrderFilter {
    /// The effective page size.
    pub fn page_size(&self) -> usize {
        self.limit.unwrap_or(50).clamp(1, 500)
    }

    /// Whether `order` matches every condition but paging: the one definition the in-memory
    /// store applies, and the SQL backends' query mirrors.
    pub fn matches(&self, order: &Order) -> bool {
        self.state.is_none_or(|s| order.state == s)
            && self.package.is_none_or(|p| order.package_id == p)
            && self.created_from.is_none_or(|t| order.created_at >= t)
            && self.created_to.is_none_or(|t| order.created_at < t)
            && self
                .phase
                .is_none_or(|p| order.failure.as_ref().is_some_and(|f| f.phase == p))
            && self.search.as_deref().is_none_or(|q| {
                let q = q.to_ascii_lowercase();
                [
                    order.order_ref.as_str().to_ascii_lowercase(),
                    order.customer.email.to_ascii_lowercase(),
                    order.server_ip.map(|i| i.to_string()).unwrap_or_default(),
                    order.id.as_str().to_ascii_lowercase(),
                ]
                .iter()
                .any(|field| field.contains(&q))
            })
            && match (&self.id_suffix, self.id_suffix_text()) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(_), Some(s)) => order.id.as_str().ends_with(&s),
            }
    }

    /// The id suffix, when it is one an id can end with (hex digits and dashes), lowercased.
    pub fn id_suffix_text(&self) -> Option<String> {
        self.id_suffix
            .as_deref()
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
    }
}

/// Where a delivery stands, as an admin reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not tried yet.
    Queued,
    /// Tried and failed; another attempt is scheduled.
    Retrying,
    /// The receiver has it.
    Delivered,
    /// Attempts are exhausted (or its channel is gone): it will not be sent again unless an
    /// admin resends it.
    Abandoned,
}

impl DeliveryState {
    /// The name shown and serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Retrying => "retrying",
            Self::Delivered => "delivered",
            Self::Abandoned => "abandoned",
        }
    }
}

/// One delivery as the order's Notifications list shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeliveryStatus {
    /// Row id: what a resend names.
    pub id: i64,
    /// Idempotency key.
    pub key: String,
    /// The event's id, shared across channels.
    pub event_id: String,
    /// The order it is about.
    pub order_id: Option<OrderId>,
    /// What it says.
    pub kind: NoticeKind,
    /// Where it goes.
    pub channel: String,
    /// What it was queued with (a failure's phase, an alert's text).
    pub detail: Option<String>,
    /// When it was queued.
    pub created_at: Timestamp,
    /// Attempts started.
    pub attempts: u32,
    /// Where it stands.
    pub state: DeliveryState,
    /// The last failure, when it failed.
    pub last_error: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<Timestamp>,
    /// When the next attempt is due.
    pub next_at: Option<Timestamp>,
}

impl DeliveryStatus {
    /// The state of a delivery row from its columns.
    pub fn state_of(
        delivered_at: Option<Timestamp>,
        next_at: Option<Timestamp>,
        attempts: u32,
    ) -> DeliveryState {
        match (delivered_at, next_at) {
            (Some(_), _) => DeliveryState::Delivered,
            (None, None) => DeliveryState::Abandoned,
            (None, Some(_)) if attempts == 0 => DeliveryState::Queued,
            (None, Some(_)) => DeliveryState::Retrying,
        }
    }
}

/// A notice waiting in the outbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Notice {
    /// Outbox row id; also the receivers' idempotency key.
    pub id: i64,
    /// The order it is about.
    pub order_id: OrderId,
    /// What it says.
    pub kind: NoticeKind,
    /// Delivery attempts so far.
    pub attempts: u32,
}

/// Counts of orders per state.
pub type StateCounts = Vec<(OrderState, u64)>;

/// A delivery to queue: one event for one channel (a webhook endpoint, an email audience, the
/// log). A notice fanned out to two webhooks and email is three deliveries, each with its own
/// attempts and schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDelivery {
    /// Idempotency key, unique per event and channel; sent to the receiver so it can drop a
    /// repeat. Queuing a key that is already queued changes nothing.
    pub key: String,
    /// The event's id, the same for every channel it goes to.
    pub event_id: String,
    /// The outbox notice it comes from; `None` for an alert queued without one (low stock).
    pub notice_id: Option<i64>,
    /// The order it is about, if any.
    pub order_id: Option<OrderId>,
    /// What it says.
    pub kind: NoticeKind,
    /// Where it goes: `webhook:<name>`, `email:customer`, `email:admin` or `log`.
    pub channel: String,
    /// What an alert without an order says (e.g. which package is low). Never a secret.
    pub detail: Option<String>,
}

/// A delivery claimed by one dispatcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Row id.
    pub id: i64,
    /// Idempotency key (see [`NewDelivery::key`]).
    pub key: String,
    /// The event's id, shared across channels.
    pub event_id: String,
    /// The order it is about, if any.
    pub order_id: Option<OrderId>,
    /// What it says.
    pub kind: NoticeKind,
    /// Where it goes.
    pub channel: String,
    /// What an alert without an order says.
    pub detail: Option<String>,
    /// When it was queued.
    pub created_at: Timestamp,
    /// This attempt's number, from 1. Counted when the delivery is claimed, so an attempt cut
    /// short by a crash still counts towards the limit.
    pub attempt: u32,
    /// Who claimed it.
    pub worker: String,
    /// Fencing token of this claim: a failure reported under an older claim is ignored.
    pub token: i64,
}

/// How a claimed delivery went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryResult {
    /// The receiver accepted it; it is never sent again.
    Delivered {
        /// When.
        at: Timestamp,
    },
    /// It failed; try again at `retry_at`, or never (`None`: attempts are exhausted).
    Failed {
        /// Why, for the admin (no secrets: receivers' replies are not echoed).
        error: String,
        /// The next attempt's time.
        retry_at: Option<Timestamp>,
    },
}

/// The persistence port.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new order with its first timeline lines and notices, or finds the order already
    /// stored under its reference (idempotent intake).
    /// The order's customer access token digest is written in the same transaction, so an
    /// accepted order always has a token.
    async fn insert_order(
        &self,
        order: &Order,
        access: &AccessToken,
        entries: &[TimelineEntry],
        notices: &[NoticeKind],
    ) -> Result<Intake, StoreError>;
    /// One order.
    async fn order(&self, id: &OrderId) -> Result<Option<Order>, StoreError>;
    /// Orders, newest first.
    async fn orders(&self, filter: &OrderFilter) -> Result<Vec<Order>, StoreError>;
    /// How many orders are in each state.
    async fn state_counts(&self) -> Result<StateCounts, StoreError>;
    /// An order's timeline, oldest first.
    async fn timeline(&self, id: &OrderId) -> Result<Vec<TimelineEntry>, StoreError>;
    /// An order's purchases, oldest first.
    async fn purchases(&self, id: &OrderId) -> Result<Vec<Purchase>, StoreError>;
    /// An order's encrypted credentials.
    async fn credentials(&self, id: &OrderId) -> Result<Option<Vec<u8>>, StoreError>;

    /// Claims up to `limit` due orders (active, `run_at <= now`, lease free or expired) for
    /// `worker` until `now + lease_for`.
    async fn claim_due(
        &self,
        worker: &str,
        now: Timestamp,
        lease_for: Duration,
        limit: usize,
    ) -> Result<Vec<Claimed>, StoreError>;
    /// When the next active order falls due (its `run_at`, or its lease expiry if later).
    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError>;
    /// Writes the order and `change` under the lease, atomically.
    async fn save(&self, lease: &Lease, order: &Order, change: Change) -> Result<(), StoreError>;
    /// Gives up a lease without changing the order (shutdown): another worker may claim it now.
    async fn release(&self, lease: &Lease) -> Result<(), StoreError>;
    /// A [`Store::save`] that releases the lease and a [`Store::claim_due`] for the same worker
    /// (`lease.worker`), in one transaction: a worker finishing a step takes its next orders
    /// in the commit that ends the step, so in steady state a claim costs no commit of its own.
    /// The lease is released whatever `change.keep_lease` says.
    ///
    /// The save is exactly [`Store::save`] (fenced by the lease token, the outcome recorded
    /// first and unfenced) and the claim exactly [`Store::claim_due`] as it would run just
    /// after it: the order just saved is claimed again only when it is due again.
    ///
    /// # Errors
    /// As [`Store::save`]: [`StoreError::LeaseLost`] when the lease was lost, and then nothing
    /// is claimed (and nothing written but the outcome). On any other error nothing is kept.
    async fn save_and_claim(
        &self,
        lease: &Lease,
        order: &Order,
        change: Change,
        now: Timestamp,
        lease_for: Duration,
        limit: usize,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// Who holds a package's flight and its newest purchase: read before the stock list, so
    /// that [`Store::begin_purchase_in_flight`] can tell whether a purchase of ours went out
    /// while the stock was read.
    async fn flight_state(&self, package: PackageId) -> Result<FlightState, StoreError>;
    /// Takes the package's single flight for the lease's order and commits the purchase intent
    /// with the order (its new attempt count) and timeline lines, in one transaction, before
    /// buyvps is sent: one commit for both, and the only way a purchase is begun, so no
    /// purchase can go out without its package's flight. The flight is taken only when no other
    /// order holds it and no other order's purchase of the package is newer than `seen` (the
    /// state read before the stock list); otherwise nothing is written. The lease is kept.
    async fn begin_purchase_in_flight(
        &self,
        lease: &Lease,
        order: &Order,
        intent: &PurchaseIntent,
        entries: &[TimelineEntry],
        seen: &FlightState,
    ) -> Result<Begun, StoreError>;
    /// Records a purchase's outcome, first writer wins (see [`Recorded`]). Not fenced.
    async fn record_outcome(
        &self,
        purchase_id: PurchaseId,
        outcome: &PurchaseOutcome,
        at: Timestamp,
    ) -> Result<Recorded, StoreError>;
    /// Makes a waiting order due at `at` if it would otherwise run later and no worker holds
    /// it: news that changes its next step (a late buyvps reply) is acted on at once rather than
    /// at the end of its wait. Only ever moves `run_at` earlier, so it needs no fencing: a worker
    /// that claims the order afterwards decides from the news. Whether it moved.
    async fn expedite(&self, id: &OrderId, at: Timestamp) -> Result<bool, StoreError>;
    /// Adds servers a discovery scan found to the inventory. An address already there keeps its
    /// first sighting; its `candidate_for` is replaced when the new entry names an order.
    async fn record_discovered(&self, found: &[Discovered]) -> Result<(), StoreError>;
    /// The inventory of one package, by address.
    async fn discovered(&self, package: PackageId) -> Result<Vec<Discovered>, StoreError>;
    /// The inventory of every package: the servers first seen at or after `since`, by address.
    /// (A server seen before a purchase was sent is not that purchase's.)
    async fn discovered_since(&self, since: Timestamp) -> Result<Vec<Discovered>, StoreError>;
    /// Purchases sent at or after `since` that may still own a server nobody accounts for: no
    /// outcome yet, or an unknown outcome not settled as bought or not bought (unsettled,
    /// escalated to an admin, or retried blindly); in id order. Discovery's rival check reads
    /// these instead of every order of the day, so its cost follows the few open purchases, not
    /// the order count.
    async fn unsettled_purchases_since(
        &self,
        since: Timestamp,
    ) -> Result<Vec<Purchase>, StoreError>;
    /// Records a discovery scan of a package that was complete with every `error` reply
    /// confirmed by re-reads. Written after the servers it found are in the inventory.
    async fn record_complete_scan(&self, scan: &CompleteScan) -> Result<(), StoreError>;
    /// A package's complete scans (see [`Store::record_complete_scan`]) that started after
    /// `after`, by start.
    async fn complete_scans(
        &self,
        package: PackageId,
        after: Timestamp,
    ) -> Result<Vec<CompleteScan>, StoreError>;
    /// The servers listed as candidates for an order that needs attention, by address.
    async fn candidates(&self, order: &OrderId) -> Result<Vec<Discovered>, StoreError>;
    /// Which order owns an address, from the orders and the ledger.
    async fn owner_of(&self, ip: Ipv4Addr) -> Result<Option<OrderId>, StoreError>;

    /// Stores an action asked for on a ready order's server, with its timeline line, and makes
    /// the order due, in one transaction: refused while another action is pending on the server
    /// or when `per_hour` actions (not counting provisioning's own) were asked for within the
    /// hour before `action.created_at`.
    async fn request_action(
        &self,
        action: &ServerAction,
        entry: &TimelineEntry,
        per_hour: u32,
    ) -> Result<ActionRequest, StoreError>;
    /// An order's pending action, if any.
    async fn open_action(&self, id: &OrderId) -> Result<Option<ServerAction>, StoreError>;
    /// An order's actions, oldest first.
    async fn actions(&self, id: &OrderId) -> Result<Vec<ServerAction>, StoreError>;
    /// What status last said about an order's server.
    async fn server_facts(&self, id: &OrderId) -> Result<Option<ServerFacts>, StoreError>;

    // issue 14: renewals and expiry
    /// Takes a renewal for a ready order, with its timeline line, and makes the order due, in
    /// one transaction; idempotent on `renewal.renewal_ref` (unique across all renewals).
    async fn request_renewal(
        &self,
        renewal: &Renewal,
        entry: &TimelineEntry,
    ) -> Result<RenewalRequest, StoreError>;
    /// An order's renewals, oldest first.
    async fn renewals(&self, id: &OrderId) -> Result<Vec<Renewal>, StoreError>;
    /// What the engine keeps about an order's server term.
    async fn server_term(&self, id: &OrderId) -> Result<Option<ServerTerm>, StoreError>;
    /// Ready servers whose last known `ExpiryDate` is at or before `until` (`YYYY-MM-DD`),
    /// soonest first, at most `limit`.
    async fn expiring(&self, until: &str, limit: usize) -> Result<Vec<Expiring>, StoreError>;
    /// Makes up to `limit` idle ready orders (no `run_at`, no live lease) whose server's last
    /// known `ExpiryDate` is at or before `until` due at `now`, soonest expiry first: the sweep
    /// that brings a server's term to the engine. Returns how many it made due.
    async fn wake_expiring(
        &self,
        until: &str,
        now: Timestamp,
        limit: usize,
    ) -> Result<usize, StoreError>;

    /// Applies an admin change to an order that no worker holds; bumps the fencing token so a
    /// stale worker cannot overwrite it.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when a worker holds a live lease or the order changed since
    /// `expected_updated_at`.
    async fn admin_save(
        &self,
        order: &Order,
        expected_updated_at: Timestamp,
        now: Timestamp,
        change: Change,
    ) -> Result<(), StoreError>;

    /// Notices due for delivery.
    async fn due_notices(&self, now: Timestamp, limit: usize) -> Result<Vec<Notice>, StoreError>;

    // issue 5: outbox deliveries
    // The dispatcher fans due notices out into per-channel deliveries and marks the notices
    // handed over ("delivered" on a notice means "handed to its deliveries"), a batch at a time
    // with `fan_out`. Where the two happen apart, a crash in between only repeats the fan-out,
    // which the unique keys make harmless.

    /// Queues `deliveries` and marks `notices` handed to them, atomically. SQL backends do it in
    /// one transaction, so a batch of notices costs one commit, not two per notice. A key
    /// already queued is left as it is, so fanning the same notice out twice queues nothing new.
    async fn fan_out(
        &self,
        deliveries: &[NewDelivery],
        notices: &[i64],
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// Queues deliveries in one transaction: a [`Store::fan_out`] that hands no notice over.
    async fn add_deliveries(
        &self,
        deliveries: &[NewDelivery],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.fan_out(deliveries, &[], now).await
    }
    /// Claims up to `limit` due deliveries (not delivered, not abandoned, `next_at <= now`, no
    /// live claim) for `worker` until `now + claim_for`, counting one attempt on each. Safe with
    /// several dispatchers: each delivery goes to one claimer at a time (PostgreSQL:
    /// `FOR UPDATE SKIP LOCKED`).
    async fn claim_deliveries(
        &self,
        worker: &str,
        now: Timestamp,
        claim_for: Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError>;
    /// A [`Store::fan_out`] and a [`Store::claim_deliveries`] in one transaction: a dispatcher
    /// round's two writes in one commit. The claim sees the deliveries just queued.
    async fn fan_out_and_claim(
        &self,
        deliveries: &[NewDelivery],
        notices: &[i64],
        now: Timestamp,
        worker: &str,
        claim_for: Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        if !deliveries.is_empty() || !notices.is_empty() {
            self.fan_out(deliveries, notices, now).await?;
        }
        self.claim_deliveries(worker, now, claim_for, limit).await
    }
    /// [`Store::finish_delivery`] for a claimed batch, in one transaction: one commit per
    /// batch, not one per delivery. Returns, for each, whether anything changed.
    async fn finish_deliveries(
        &self,
        results: &[(Delivery, DeliveryResult)],
    ) -> Result<Vec<bool>, StoreError> {
        let mut out = Vec::with_capacity(results.len());
        for (d, r) in results {
            out.push(self.finish_delivery(d, r).await?);
        }
        Ok(out)
    }
    /// Records how a claimed delivery went; returns whether anything changed. `Delivered` is
    /// recorded whatever the claim (it is a fact, and it stops every further send); `Failed`
    /// only while `delivery`'s claim is the current one and it was not delivered meanwhile.
    async fn finish_delivery(
        &self,
        delivery: &Delivery,
        result: &DeliveryResult,
    ) -> Result<bool, StoreError>;
    /// Work waiting in the outbox: notices not yet fanned out plus deliveries neither delivered
    /// nor abandoned.
    async fn outbox_backlog(&self) -> Result<u64, StoreError>;

    // issue 15: notices you can trust
    /// An order's deliveries, oldest first: its Notifications list, and what the dispatcher
    /// reads to send one failure notice per failure episode.
    async fn deliveries(&self, order: &OrderId) -> Result<Vec<DeliveryStatus>, StoreError>;
    /// Appends timeline lines to orders without a lease (the dispatcher's "queued",
    /// "delivered" and "abandoned" lines), in one transaction. A line for an order that does
    /// not exist is dropped.
    async fn append_timeline(&self, entries: &[(OrderId, TimelineEntry)])
    -> Result<(), StoreError>;
    /// Fired when another process may have made work due (an order taken in, made due by an
    /// admin or a late reply, a lease given up): PostgreSQL sends a NOTIFY in the transaction
    /// that makes the work due, and every process listening fires this, so idle workers start
    /// at once instead of at their next poll. `None` for stores with no other process to hear
    /// from; polling stays the fallback everywhere (a lost connection, a missed signal).
    fn work_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }

    /// Housekeeping the database needs and is not doing by itself; `serve` calls it every
    /// [`MAINTENANCE_INTERVAL`]. PostgreSQL: vacuums the queue tables when the server's
    /// autovacuum is off (dead index entries would otherwise pile up in front of every claim).
    /// Others: nothing to do.
    async fn maintain(&self) -> Result<(), StoreError> {
        Ok(())
    }
    // issue 4: catalog and access tokens
    /// Replaces the catalog with the packages of one ipstock read, atomically: packages no
    /// longer listed disappear.
    async fn replace_catalog(&self, packages: &[CatalogPackage]) -> Result<(), StoreError>;
    /// The catalog as last synced, ordered by PID; empty when never synced.
    async fn catalog(&self) -> Result<Vec<CatalogPackage>, StoreError>;
    /// The order stored under a storefront reference (intake checks replays before the catalog,
    /// so a replayed webhook is answered even when its package has since sold out).
    async fn order_by_ref(&self, order_ref: &OrderRef) -> Result<Option<Order>, StoreError>;
    /// Replaces an order's customer access token (an explicit rotation) and records `entry`
    /// (who rotated it and why) in its timeline, in one transaction.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when there is no such order.
    async fn rotate_access_token(
        &self,
        id: &OrderId,
        next: &AccessToken,
        entry: &TimelineEntry,
    ) -> Result<(), StoreError>;
    /// The order's current access token, if it has one.
    async fn access_token(&self, id: &OrderId) -> Result<Option<AccessToken>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::order::CustomerRequest;
    use crate::domain::{NewOrder, OrderRequest};

    fn order(order_ref: &str) -> Order {
        let req = OrderRequest {
            order_ref: order_ref.into(),
            package: 5,
            ram_gb: 2,
            customer: CustomerRequest {
                email: "a@example.com".into(),
                name: "A".into(),
            },
            os: None,
        };
        Order::accept(NewOrder::parse(&req).unwrap(), Timestamp(1))
    }

    fn pkg(id: u32, free: u32, active: bool, at: i64) -> CatalogPackage {
        CatalogPackage {
            id: PackageId(id),
            name: format!("103.82.{id}"),
            free,
            active,
            synced_at: Timestamp(at),
        }
    }

    async fn suite(store: &dyn Store) {
        assert!(store.catalog().await.unwrap().is_empty());
        store
            .replace_catalog(&[pkg(9, 0, false, 10), pkg(5, 71, true, 10)])
            .await
            .unwrap();
        assert_eq!(
            store.catalog().await.unwrap(),
            vec![pkg(5, 71, true, 10), pkg(9, 0, false, 10)]
        );
        // A later sync replaces the whole list: package 9 is no longer sold at all.
        store
            .replace_catalog(&[pkg(5, 3, true, 20), pkg(7, 40, true, 20)])
            .await
            .unwrap();
        assert_eq!(
            store.catalog().await.unwrap(),
            vec![pkg(5, 3, true, 20), pkg(7, 40, true, 20)]
        );

        let o = order("ref-1");
        let access = AccessToken {
            hash: "aa11".into(),
            generation: Some(0),
        };
        store.insert_order(&o, &access, &[], &[]).await.unwrap();
        let found = store
            .order_by_ref(&OrderRef::parse("ref-1").unwrap())
            .await
            .unwrap();
        assert_eq!(found.map(|f| f.id), Some(o.id.clone()));
        assert!(
            store
                .order_by_ref(&OrderRef::parse("ref-2").unwrap())
                .await
                .unwrap()
                .is_none()
        );

        assert_eq!(store.access_token(&o.id).await.unwrap(), Some(access));
        let next = AccessToken {
            hash: "bb22".into(),
            generation: Some(1),
        };
        let entry = TimelineEntry {
            at: Timestamp(5),
            kind: crate::domain::EntryKind::Admin,
            message: "token rotated".into(),
        };
        store
            .rotate_access_token(&o.id, &next, &entry)
            .await
            .unwrap();
        assert_eq!(store.access_token(&o.id).await.unwrap(), Some(next.clone()));
        assert!(
            store
                .timeline(&o.id)
                .await
                .unwrap()
                .iter()
                .any(|e| e.message == "token rotated"),
            "the rotation is on the record"
        );
        assert!(
            store
                .rotate_access_token(&OrderId::new(), &next, &entry)
                .await
                .is_err(),
            "no order, no token"
        );
        assert_eq!(store.access_token(&OrderId::new()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn memory_store_passes_the_catalog_and_token_suite() {
        suite(&memory::MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn sqlite_store_passes_the_catalog_and_token_suite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        suite(&sqlite::SqliteStore::connect(&url).await.unwrap()).await;
    }

    #[test]
    fn backends_are_chosen_by_scheme() {
        assert_eq!(Backend::of("sqlite://x.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::of("sqlite::memory:"), Some(Backend::Sqlite));
        assert_eq!(Backend::of("postgres://db/x"), Some(Backend::Postgres));
        assert_eq!(Backend::of("PostgreSQL://db/x"), Some(Backend::Postgres));
        assert_eq!(Backend::of("mysql://db/x"), None);
        assert_eq!(Backend::of("provisioner.db"), None);
    }
}
