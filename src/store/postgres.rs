//! The PostgreSQL store: many `provisioner serve` processes on many machines share one database.
//!
//! Same schema and semantics as the SQLite store; what changes is how concurrent processes are
//! kept apart:
//! - **Claims** lock due rows with `FOR UPDATE SKIP LOCKED` inside a single `UPDATE ... RETURNING`,
//!   so two workers never claim the same order and neither waits for the other.
//! - **Fenced writes** are an `UPDATE ... WHERE lease_token = $ AND lease_owner = $` at the start of
//!   the transaction: it both checks the fence and row-locks the order until commit, so a claim
//!   cannot slip in between the check and the rest of the write.
//! - **Single flight** is the `flights` table (one row per package), taken with
//!   `INSERT ... ON CONFLICT DO NOTHING` and read back inside the fenced transaction; it holds
//!   across processes and machines because it lives in the database.
//! - **Migrations** run in one transaction under `pg_advisory_xact_lock`, so processes starting
//!   together do not race to create the schema.
//!
//! Every timestamp is bound from the `Clock` as BIGINT milliseconds; SQL's `now()` is never used,
//! so the database server's clock plays no part in lease expiry.
//!
//! Layout of this file: connection and migrations, binding and transaction helpers, then the
//! `Store` impl with one method per trait method. Row decoding and the statements that read the
//! same on SQLite live once in `store::sql`; what is PostgreSQL's own (SKIP LOCKED, UNNEST
//! inserts, the flight's row lock, vacuum) stays here.

use crate::domain::CompleteScan;
use crate::domain::PurchaseId;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions};
use sqlx::query::Query;
use sqlx::{ConnectOptions, Connection, PgPool, Postgres};

use super::sql::{self, Arg, SqlRow, Stmt};
use super::{
    AccessToken, ActionRequest, Begun, Change, Claimed, Delivery, DeliveryResult, DeliveryStatus,
    Expiring, FlightState, Intake, Lease, NewDelivery, Notice, OrderFilter, Recorded,
    RenewalRequest, StateCounts, Store, StoreError,
};
use crate::clock::Timestamp;
use crate::domain::{
    CatalogPackage, Discovered, NoticeKind, Order, OrderId, OrderRef, PackageId, Purchase,
    PurchaseIntent, PurchaseOutcome, TimelineEntry,
};
use crate::domain::{Renewal, ServerAction, ServerFacts, ServerTerm};

/// Embedded migrations, applied in order and recorded in `schema_migrations`.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "catalog_outbox_pool",
        include_str!("../../migrations/postgres/0002_catalog_outbox_pool.sql"),
    ),
    (
        3,
        "queue_table_vacuum",
        include_str!("../../migrations/postgres/0003_queue_table_vacuum.sql"),
    ),
    (
        4,
        "storefront_tokens",
        include_str!("../../migrations/postgres/0004_storefront_tokens.sql"),
    ),
    (
        5,
        "discovered",
        include_str!("../../migrations/postgres/0005_discovered.sql"),
    ),
    (
        6,
        "server_actions",
        include_str!("../../migrations/postgres/0006_server_actions.sql"),
    ),
    (
        7,
        "purchases_package",
        include_str!("../../migrations/postgres/0007_purchases_package.sql"),
    ),
    (
        8,
        "renewals",
        include_str!("../../migrations/postgres/0008_renewals.sql"),
    ),
    (
        9,
        "purchases_stock_after",
        include_str!("../../migrations/postgres/0009_purchases_stock_after.sql"),
    ),
    (
        10,
        "complete_scans",
        include_str!("../../migrations/postgres/0010_complete_scans.sql"),
    ),
    (
        11,
        "purchases_unknown",
        include_str!("../../migrations/postgres/0011_purchases_unknown.sql"),
    ),
];

/// The tables whose rows are updated or deleted on every order; vacuumed by
/// [`Store::maintain`] when the server's autovacuum is off.
const QUEUE_TABLES: &str = "orders, flights, outbox, outbox_deliveries";

/// The advisory lock key that serializes migrations across processes ("provisio" in ASCII):
/// any fixed number works as long as nothing else on the database uses it.
const MIGRATION_LOCK: i64 = 0x7072_6f76_6973_696f;

/// Connections per process. A step holds a connection only for the length of one store call,
/// never across a SmartVPS call, so a few connections serve many concurrent orders; and it keeps
/// several machines well inside PostgreSQL's default `max_connections = 100`.
pub const DEFAULT_POOL_SIZE: u32 = 10;

/// The channel NOTIFY wakes workers on: sent with the commit that makes work due (intake: just
/// after it, see [`announcer`]), and every process LISTENs to it.
pub const WORK_CHANNEL: &str = "provisioner_work";

/// The PostgreSQL store.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    /// Shared by every worker task, the API and the dispatcher of this process.
    pool: PgPool,
    /// The server's `autovacuum` was off at connect: [`Store::maintain`] vacuums instead.
    self_vacuum: bool,
    /// Fired on every notification on [`WORK_CHANNEL`] (see [`Store::work_signal`]).
    work: Arc<tokio::sync::Notify>,
    /// Asks the announcer to send a NOTIFY: intake commits first, then says so here, and a
    /// burst of intakes costs one NOTIFY (see [`announcer`]).
    announce: Arc<tokio::sync::Notify>,
    /// Stops the listener and the announcer when the last clone of the store is dropped.
    _listener: Arc<tokio_util::sync::DropGuard>,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`) with
    /// [`DEFAULT_POOL_SIZE`] connections and applies migrations.
    ///
    /// # Errors
    /// When the URL is malformed, the server cannot be reached or a migration fails. Messages
    /// carry the URL with its password redacted.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, DEFAULT_POOL_SIZE).await
    }

    /// As [`PostgresStore::connect`], with `pool_size` connections at most.
    ///
    /// # Errors
    /// As for [`PostgresStore::connect`].
    pub async fn connect_with(url: &str, pool_size: u32) -> Result<Self, StoreError> {
        let shown = crate::redact::url(url, crate::redact::User::Shown);
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Database(format!("bad database url {shown}: {e}")))?
            .application_name("provisioner");
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            // No liveness ping per borrow: it is a network round trip before every statement.
            // A connection the server dropped fails its statement instead; the store call
            // returns an error, the step is retried from the database, and the pool discards
            // the connection when it comes back (sqlx still pings on return).
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .idle_timeout(Some(Duration::from_secs(600)))
            .max_lifetime(Some(Duration::from_secs(3600)))
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Database(format!("cannot connect to {shown}: {e}")))?;
        let autovacuum: String = sqlx::query_scalar("SELECT current_setting('autovacuum')")
            .fetch_one(&pool)
            .await?;
        let self_vacuum = autovacuum != "on";
        if self_vacuum {
            tracing::warn!(
                "PostgreSQL's autovacuum is off: provisioner vacuums its own queue tables ({QUEUE_TABLES}) \
                 every {}s; turn autovacuum on for the rest of the database",
                super::MAINTENANCE_INTERVAL.as_secs()
            );
        }
        let work = Arc::new(tokio::sync::Notify::new());
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(listen(
            (*pool.connect_options()).clone(),
            Arc::clone(&work),
            stop.clone(),
        ));
        let announce = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(announcer(pool.clone(), Arc::clone(&announce), stop.clone()));
        let store = Self {
            pool,
            self_vacuum,
            work,
            announce,
            _listener: Arc::new(stop.drop_guard()),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Held until commit: a second process starting now waits here, then finds every
        // migration applied. Without it two processes can both see an empty schema and one
        // fails on CREATE TABLE.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        for (version, name, sql) in MIGRATIONS {
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await?;
            if done.is_some() {
                continue;
            }
            sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    StoreError::Database(format!("migration {version} ({name}) failed: {e}"))
                })?;
            sqlx::query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)")
                .bind(version)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            tracing::info!(version, name, "applied database migration");
        }
        tx.commit().await?;
        Ok(())
    }

    /// The pool, for benchmarks that measure the raw commit rate of the same database and for
    /// tests that inspect the ledger across processes.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// LISTENs on [`WORK_CHANNEL`] and fires `work` on every notification, until `stop`, on a
/// connection of its own (a pool of one, so the store's pool keeps all of its connections).
/// When that connection is lost it is opened again, and `work` fired, since a notification may
/// have been missed meanwhile; until then polling finds the work.
async fn listen(
    options: PgConnectOptions,
    work: Arc<tokio::sync::Notify>,
    stop: tokio_util::sync::CancellationToken,
) {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options);
    let mut pause = Duration::from_millis(100);
    loop {
        let session = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(WORK_CHANNEL).await?;
            work.notify_waiters();
            loop {
                // None: the connection was lost and opened again; something may be missed.
                let _ = listener.try_recv().await?;
                work.notify_waiters();
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            () = stop.cancelled() => return,
            ended = session => {
                if let Err(e) = ended {
                    tracing::debug!("LISTEN {WORK_CHANNEL} failed ({e}); polling until it is back");
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Sends a NOTIFY on [`WORK_CHANNEL`] each time it is asked to (`pending`), until `stop`:
/// asks made while one is being sent come to one more NOTIFY, not one each.
///
/// Intake does not NOTIFY inside its own transaction: PostgreSQL serializes the commits of
/// every transaction that notifies (one lock on the notification queue, held through the
/// commit's WAL flush), which cut intake from 1,350-1,900 to 580-700 orders/s in
/// `bench throughput`. It commits, then asks here, so the notification still never comes before
/// the order is visible. The NOTIFY's own transaction skips the WAL flush
/// (`synchronous_commit = off`): a notification is a hint, not a fact to keep. A process that
/// dies between the two leaves the order to the other processes' polling.
async fn announcer(
    pool: PgPool,
    pending: Arc<tokio::sync::Notify>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = pending.notified() => {}
        }
        let sent = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SET LOCAL synchronous_commit = off; NOTIFY {WORK_CHANNEL}"
        )))
        .execute(&pool)
        .await;
        if let Err(e) = sent {
            tracing::debug!("NOTIFY {WORK_CHANNEL} failed (the other processes will poll): {e}");
        }
    }
}

/// `url` with its database replaced by `database`: how tools that create a fresh database (the
/// throughput benchmark, the tests) address it on the same server with the same credentials.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|j| start + j))
        .unwrap_or(base.len());
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Binding the shared statements, and the transaction helpers.

/// Binds a shared statement for PostgreSQL.
fn query(s: &Stmt) -> Query<'_, Postgres, PgArguments> {
    s.args.iter().fold(
        sqlx::query(sqlx::AssertSqlSafe(s.sql.as_str())),
        |q, a| match a {
            Arg::Int(v) => q.bind(*v),
            Arg::Text(v) => q.bind(v.as_deref()),
            Arg::Bytes(v) => q.bind(v.as_deref()),
        },
    )
}

/// The row locking of a claim's inner select. SKIP LOCKED: rows another process is claiming or
/// writing right now are passed over, not waited for; under READ COMMITTED a row updated since
/// the snapshot is re-checked against the WHERE before it is locked, so a lease taken meanwhile
/// is respected. Dispatchers in several processes likewise each take different deliveries.
const CLAIM_LOCK: &str = " FOR UPDATE SKIP LOCKED";

type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

/// Writes the order's mutable columns and everything in `change`. With `fence` the update only
/// applies under that lease; without, the caller already checked (and bumped the token) in this
/// transaction (admin changes). A write that matches no row (the token moved on) is
/// [`StoreError::LeaseLost`] and the caller's transaction is dropped, so nothing of it is kept.
async fn write(
    tx: &mut Tx,
    fence: Option<&Lease>,
    order: &Order,
    change: Change,
    now: Timestamp,
) -> Result<(), StoreError> {
    let done = query(&sql::update_order(fence, order, &change))
        .execute(&mut **tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::LeaseLost(order.id.clone()));
    }
    insert_entries(tx, &order.id, &change.entries).await?;
    for s in sql::after_order_write(order, &change) {
        query(&s).execute(&mut **tx).await?;
    }
    insert_notices(tx, &order.id, &change.notices, now).await
}

/// A worker's save (see [`Store::save`]) in `tx`, which the caller commits when this is `Ok`.
/// `Ok(Err(LeaseLost))`: the fence failed after the purchase outcome was recorded, and the
/// outcome is to be kept (the fenced update wrote nothing). A plain `Err` keeps nothing: the
/// caller drops `tx`.
async fn save_order(
    tx: &mut Tx,
    lease: &Lease,
    order: &Order,
    change: Change,
) -> Result<Result<(), StoreError>, StoreError> {
    let Some(o) = change.outcome.clone() else {
        write(tx, Some(lease), order, change, order.updated_at).await?;
        return Ok(Ok(()));
    };
    // The outcome first and unfenced: a fact about the world, committed even when the lease is
    // gone.
    if record_outcome(tx, o.purchase_id, &o.outcome, o.at).await? == Recorded::AlreadyDecided {
        return Ok(Err(StoreError::LeaseLost(order.id.clone())));
    }
    match write(tx, Some(lease), order, change, order.updated_at).await {
        Err(StoreError::LeaseLost(id)) => Ok(Err(StoreError::LeaseLost(id))),
        other => other.map(Ok),
    }
}

/// Appends timeline lines in one statement (one round trip however many lines a step wrote).
async fn insert_entries(
    tx: &mut Tx,
    id: &OrderId,
    entries: &[TimelineEntry],
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let at: Vec<i64> = entries.iter().map(|e| e.at.millis()).collect();
    let kind: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
    let message: Vec<&str> = entries.iter().map(|e| e.message.as_str()).collect();
    // WITH ORDINALITY keeps the lines' order in their serial ids, which is the timeline's order.
    sqlx::query(
        "INSERT INTO timeline (order_id, at, kind, message) \
         SELECT $1, t.at, t.kind, t.message FROM UNNEST($2::bigint[], $3::text[], $4::text[]) WITH ORDINALITY AS t(at, kind, message, n) \
         ORDER BY t.n",
    )
    .bind(id.as_str())
    .bind(at)
    .bind(kind)
    .bind(message)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_notices(
    tx: &mut Tx,
    id: &OrderId,
    notices: &[NoticeKind],
    now: Timestamp,
) -> Result<(), StoreError> {
    if notices.is_empty() {
        return Ok(());
    }
    let kinds: Vec<&str> = notices.iter().map(|k| k.as_str()).collect();
    sqlx::query(
        "INSERT INTO outbox (order_id, kind, created_at, next_at) \
         SELECT $1, t.kind, $3, $3 FROM UNNEST($2::text[]) WITH ORDINALITY AS t(kind, n) ORDER BY t.n",
    )
    .bind(id.as_str())
    .bind(kinds)
    .bind(now.millis())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// `write` (an INSERT or UPDATE of at most one row) made into a statement that also sends a
/// NOTIFY on [`WORK_CHANNEL`] when it wrote a row, and returns one row exactly then. The
/// notification is delivered at commit, to every process listening.
fn notify_if_any(write: Stmt) -> Stmt {
    Stmt {
        sql: format!(
            "WITH written AS ({} RETURNING 1) SELECT pg_notify('{WORK_CHANNEL}', '') FROM written",
            write.sql
        ),
        args: write.args,
    }
}

/// Sends a NOTIFY on [`WORK_CHANNEL`] with `tx`'s commit.
async fn notify_work(tx: &mut Tx) -> Result<(), StoreError> {
    sqlx::query(sqlx::AssertSqlSafe(format!("NOTIFY {WORK_CHANNEL}")))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Records a purchase outcome first-writer-wins in `tx`; whether it was the first.
async fn record_outcome(
    tx: &mut Tx,
    purchase_id: PurchaseId,
    outcome: &PurchaseOutcome,
    at: Timestamp,
) -> Result<Recorded, StoreError> {
    let (first, late) = sql::record_outcome(purchase_id, outcome, at);
    if query(&first).execute(&mut **tx).await?.rows_affected() == 1 {
        return Ok(Recorded::Recorded);
    }
    if let Some(late) = late {
        query(&late).execute(&mut **tx).await?;
    }
    Ok(Recorded::AlreadyDecided)
}

/// Queues deliveries and marks notices handed to them, in `tx` (see [`Store::fan_out`]).
async fn fan_out(
    tx: &mut Tx,
    deliveries: &[NewDelivery],
    notices: &[i64],
    now: Timestamp,
) -> Result<(), StoreError> {
    if !deliveries.is_empty() {
        let col = |f: fn(&NewDelivery) -> Option<&str>| -> Vec<Option<&str>> {
            deliveries.iter().map(f).collect()
        };
        let notice_ids: Vec<Option<i64>> = deliveries.iter().map(|d| d.notice_id).collect();
        // WITH ORDINALITY keeps the batch's order in the serial ids, which is delivery order.
        sqlx::query(
            "INSERT INTO outbox_deliveries (key, event_id, notice_id, order_id, kind, channel, detail, created_at, next_at) \
             SELECT d.key, d.event_id, d.notice_id, d.order_id, d.kind, d.channel, d.detail, $8, $8 \
             FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[]) \
             WITH ORDINALITY AS d(key, event_id, notice_id, order_id, kind, channel, detail, n) \
             ORDER BY d.n ON CONFLICT (key) DO NOTHING",
        )
        .bind(col(|d| Some(d.key.as_str())))
        .bind(col(|d| Some(d.event_id.as_str())))
        .bind(notice_ids)
        .bind(col(|d| d.order_id.as_ref().map(OrderId::as_str)))
        .bind(col(|d| Some(d.kind.as_str())))
        .bind(col(|d| Some(d.channel.as_str())))
        .bind(col(|d| d.detail.as_deref()))
        .bind(now.millis())
        .execute(&mut **tx)
        .await?;
    }
    if !notices.is_empty() {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, next_at = NULL, delivered_at = $1 WHERE id = ANY($2)",
        )
        .bind(now.millis())
        .bind(notices)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The port.

#[async_trait]
impl Store for PostgresStore {
    async fn insert_order(
        &self,
        order: &Order,
        access: &AccessToken,
        entries: &[TimelineEntry],
        notices: &[NoticeKind],
    ) -> Result<Intake, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Insert first and look only on a clash: a new order (the usual case) costs one
        // statement fewer than look-then-insert.
        let inserted = query(&sql::insert_order(order, access))
            .execute(&mut *tx)
            .await?;
        if inserted.rows_affected() == 0 {
            let row = query(&sql::order_by_ref(&order.order_ref))
                .fetch_one(&mut *tx)
                .await?;
            let existing = sql::order(&row)?;
            return Ok(if existing.fingerprint == order.fingerprint {
                Intake::Existing(existing)
            } else {
                Intake::Conflict(existing)
            });
        }
        insert_entries(&mut tx, &order.id, entries).await?;
        insert_notices(&mut tx, &order.id, notices, order.created_at).await?;
        tx.commit().await?;
        // Committed: now other processes' idle workers may be woken (see `announcer`).
        self.announce.notify_one();
        Ok(Intake::Created(order.clone()))
    }

    async fn order(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        let row = query(&sql::order_by_id(id))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(sql::order).transpose()
    }

    async fn orders(&self, f: &OrderFilter) -> Result<Vec<Order>, StoreError> {
        let rows = query(&sql::orders(f)).fetch_all(&self.pool).await?;
        rows.iter().map(sql::order).collect()
    }

    async fn state_counts(&self) -> Result<StateCounts, StoreError> {
        let rows = query(&sql::state_counts_query())
            .fetch_all(&self.pool)
            .await?;
        sql::state_counts(&rows)
    }

    async fn timeline(&self, id: &OrderId) -> Result<Vec<TimelineEntry>, StoreError> {
        let rows = query(&sql::timeline(id)).fetch_all(&self.pool).await?;
        rows.iter().map(sql::timeline_entry).collect()
    }

    async fn purchases(&self, id: &OrderId) -> Result<Vec<Purchase>, StoreError> {
        let rows = query(&sql::purchases(id)).fetch_all(&self.pool).await?;
        rows.iter().map(sql::purchase).collect()
    }

    async fn credentials(&self, id: &OrderId) -> Result<Option<Vec<u8>>, StoreError> {
        let row = query(&sql::credentials(id))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| r.opt_bytes("credentials"))
            .transpose()?
            .flatten())
    }

    async fn claim_due(
        &self,
        worker: &str,
        now: Timestamp,
        lease_for: Duration,
        limit: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        let expires = now.plus(lease_for);
        let rows = query(&sql::claim_due(worker, expires, now, limit, CLAIM_LOCK))
            .fetch_all(&self.pool)
            .await?;
        sql::claimed_all(&rows, worker, expires)
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let row = query(&sql::next_due()).fetch_one(&self.pool).await?;
        Ok(row.opt_int("next_due")?.map(Timestamp))
    }

    async fn save(&self, lease: &Lease, order: &Order, change: Change) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let saved = save_order(&mut tx, lease, order, change).await?;
        tx.commit().await?;
        saved
    }

    async fn save_and_claim(
        &self,
        lease: &Lease,
        order: &Order,
        change: Change,
        now: Timestamp,
        lease_for: Duration,
        limit: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        let change = Change {
            keep_lease: false,
            ..change
        };
        let mut tx = self.pool.begin().await?;
        if let Err(lost) = save_order(&mut tx, lease, order, change).await? {
            // Only the outcome was written: keep it, claim nothing.
            tx.commit().await?;
            return Err(lost);
        }
        // In the save's transaction, after it: the claim sees the order as just saved (its row
        // is locked by this transaction, which SKIP LOCKED does not skip for its own locks).
        let expires = now.plus(lease_for);
        let claim = sql::claim_due(&lease.worker, expires, now, limit, CLAIM_LOCK);
        let rows = query(&claim).fetch_all(&mut *tx).await?;
        let claimed = sql::claimed_all(&rows, &lease.worker, expires)?;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        // Released, the order is claimable at once: other processes are told.
        let done = query(&notify_if_any(sql::release(lease)))
            .fetch_optional(&self.pool)
            .await?;
        if done.is_none() {
            Err(StoreError::LeaseLost(lease.order_id.clone()))
        } else {
            Ok(())
        }
    }

    async fn flight_state(&self, package: PackageId) -> Result<FlightState, StoreError> {
        let row = query(&sql::flight_state(package))
            .fetch_one(&self.pool)
            .await?;
        sql::flight_state_row(&row)
    }

    async fn begin_purchase_in_flight(
        &self,
        lease: &Lease,
        order: &Order,
        intent: &PurchaseIntent,
        entries: &[TimelineEntry],
        seen: &FlightState,
    ) -> Result<Begun, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The flight first, fenced in the INSERT's SELECT. A concurrent insert for the same
        // package makes this wait for that transaction's end, then do nothing (it committed) or
        // insert (it rolled back): never two holders. Refused, the transaction is dropped with
        // nothing written.
        let take = sql::take_flight(lease, intent.package_id, seen);
        if query(&take).execute(&mut *tx).await?.rows_affected() == 0 {
            // A new statement sees rows committed since the insert began: the holder.
            let row = query(&sql::flight_after_refusal(lease, intent.package_id))
                .fetch_one(&mut *tx)
                .await?;
            if let Some(refused) = sql::refused_flight(&row, lease)? {
                return Ok(refused);
            }
        }
        // The fenced order write (it row-locks the order until commit), then the intent.
        let change = Change {
            entries: entries.to_vec(),
            keep_lease: true,
            ..Change::default()
        };
        write(&mut tx, Some(lease), order, change, intent.sent_at).await?;
        let row = query(&sql::insert_purchase(intent))
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Begun::Purchase(PurchaseId(row.int("id")?)))
    }

    async fn record_outcome(
        &self,
        purchase_id: PurchaseId,
        outcome: &PurchaseOutcome,
        at: Timestamp,
    ) -> Result<Recorded, StoreError> {
        let (first, late) = sql::record_outcome(purchase_id, outcome, at);
        if query(&first).execute(&self.pool).await?.rows_affected() == 1 {
            return Ok(Recorded::Recorded);
        }
        if let Some(late) = late {
            query(&late).execute(&self.pool).await?;
        }
        Ok(Recorded::AlreadyDecided)
    }

    async fn expedite(&self, id: &OrderId, at: Timestamp) -> Result<bool, StoreError> {
        let done = query(&notify_if_any(sql::expedite(id, at)))
            .fetch_optional(&self.pool)
            .await?;
        Ok(done.is_some())
    }

    async fn record_discovered(&self, found: &[Discovered]) -> Result<(), StoreError> {
        if found.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for d in found {
            query(&sql::record_discovered(d)).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn discovered(&self, package: PackageId) -> Result<Vec<Discovered>, StoreError> {
        let rows = query(&sql::discovered_in(package))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(sql::discovered).collect()
    }

    async fn discovered_since(&self, since: Timestamp) -> Result<Vec<Discovered>, StoreError> {
        let rows = query(&sql::discovered_since(since))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(sql::discovered).collect()
    }

    async fn unsettled_purchases_since(
        &self,
        since: Timestamp,
    ) -> Result<Vec<Purchase>, StoreError> {
        let rows = query(&sql::unsettled_purchases_since(since))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(sql::purchase).collect()
    }

    async fn candidates(&self, order: &OrderId) -> Result<Vec<Discovered>, StoreError> {
        let rows = query(&sql::candidates_for(order))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(sql::discovered).collect()
    }

    async fn record_complete_scan(&self, scan: &CompleteScan) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        query(&sql::record_complete_scan(scan))
            .execute(&mut *tx)
            .await?;
        query(&sql::prune_complete_scans(
            scan.package_id,
            scan.retained_from(),
        ))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn complete_scans(
        &self,
        package: PackageId,
        after: Timestamp,
    ) -> Result<Vec<CompleteScan>, StoreError> {
        let rows = query(&sql::complete_scans(package, after))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(sql::complete_scan).collect()
    }

    async fn owner_of(&self, ip: Ipv4Addr) -> Result<Option<OrderId>, StoreError> {
        let row = query(&sql::owner_of(ip)).fetch_optional(&self.pool).await?;
        row.map(|r| sql::order_id(&r.text("id")?, "order id"))
            .transpose()
    }

    async fn request_action(
        &self,
        action: &ServerAction,
        entry: &TimelineEntry,
        per_hour: u32,
    ) -> Result<ActionRequest, StoreError> {
        let id = &action.order_id;
        let since = action.created_at.minus(sql::ACTION_WINDOW);
        let mut tx = self.pool.begin().await?;
        let state = query(&sql::order_state(id, " FOR UPDATE"))
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.text("state"))
            .transpose()?;
        let open = query(&sql::open_action(id))
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| sql::server_action(&r))
            .transpose()?;
        let recent = query(&sql::actions_since(id, since))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.int("created_at"))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(refused) = sql::refuse_action(state.as_deref(), open, &recent, per_hour)? {
            return Ok(refused);
        }
        query(&sql::insert_action(action)).execute(&mut *tx).await?;
        let stored = query(&sql::open_action(id))
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::from)
            .and_then(|r| sql::server_action(&r))?;
        insert_entries(&mut tx, id, std::slice::from_ref(entry)).await?;
        query(&sql::schedule_action(id, action.created_at))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ActionRequest::Created(stored))
    }

    async fn open_action(&self, id: &OrderId) -> Result<Option<ServerAction>, StoreError> {
        query(&sql::open_action(id))
            .fetch_optional(&self.pool)
            .await?
            .map(|r| sql::server_action(&r))
            .transpose()
    }

    async fn actions(&self, id: &OrderId) -> Result<Vec<ServerAction>, StoreError> {
        let rows = query(&sql::actions_of(id)).fetch_all(&self.pool).await?;
        rows.iter().map(sql::server_action).collect()
    }

    async fn server_facts(&self, id: &OrderId) -> Result<Option<ServerFacts>, StoreError> {
        query(&sql::facts_of(id))
            .fetch_optional(&self.pool)
            .await?
            .map(|r| sql::server_facts(&r))
            .transpose()
    }

    async fn request_renewal(
        &self,
        renewal: &Renewal,
        entry: &TimelineEntry,
    ) -> Result<RenewalRequest, StoreError> {
        let id = &renewal.order_id;
        let mut tx = self.pool.begin().await?;
        let state = query(&sql::order_state(id, " FOR UPDATE"))
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.text("state"))
            .transpose()?;
        let existing = query(&sql::renewal_by_ref(&renewal.renewal_ref))
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| sql::renewal(&r))
            .transpose()?;
        if let Some(refused) = sql::refuse_renewal(renewal, state.as_deref(), existing)? {
            return Ok(refused);
        }
        // The unique index on renewal_ref is the last word: two replays racing each other
        // cannot both insert.
        query(&sql::insert_renewal(renewal))
            .execute(&mut *tx)
            .await?;
        let stored = query(&sql::renewal_by_ref(&renewal.renewal_ref))
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::from)
            .and_then(|r| sql::renewal(&r))?;
        insert_entries(&mut tx, id, std::slice::from_ref(entry)).await?;
        query(&sql::schedule_action(id, renewal.created_at))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(RenewalRequest::Created(stored))
    }

    async fn renewals(&self, id: &OrderId) -> Result<Vec<Renewal>, StoreError> {
        let rows = query(&sql::renewals_of(id)).fetch_all(&self.pool).await?;
        rows.iter().map(sql::renewal).collect()
    }

    async fn server_term(&self, id: &OrderId) -> Result<Option<ServerTerm>, StoreError> {
        query(&sql::term_of(id))
            .fetch_optional(&self.pool)
            .await?
            .map(|r| sql::server_term(&r))
            .transpose()
    }

    async fn expiring(&self, until: &str, limit: usize) -> Result<Vec<Expiring>, StoreError> {
        let rows = query(&sql::expiring(until, limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Expiring {
                    order_id: OrderId::parse(&r.text("order_id")?)
                        .map_err(|_| StoreError::Corrupt("server_facts.order_id".into()))?,
                    expiry: r.text("expiry")?,
                })
            })
            .collect()
    }

    async fn wake_expiring(
        &self,
        until: &str,
        now: Timestamp,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let done = query(&sql::wake_expiring(until, now, limit))
            .execute(&self.pool)
            .await?;
        Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
    }

    async fn admin_save(
        &self,
        order: &Order,
        expected_updated_at: Timestamp,
        now: Timestamp,
        change: Change,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = query(&sql::admin_fence(order, expected_updated_at, now))
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(order.id.clone()));
        }
        let change = Change {
            keep_lease: false,
            ..change
        };
        write(&mut tx, None, order, change, now).await?;
        if order.state.is_active() {
            // A retry or a resolution makes the order due: other processes are told.
            notify_work(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn due_notices(&self, now: Timestamp, limit: usize) -> Result<Vec<Notice>, StoreError> {
        let rows = query(&sql::due_notices(now, limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(sql::notice).collect()
    }

    async fn fan_out(
        &self,
        deliveries: &[NewDelivery],
        notices: &[i64],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        fan_out(&mut tx, deliveries, notices, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn fan_out_and_claim(
        &self,
        deliveries: &[NewDelivery],
        notices: &[i64],
        now: Timestamp,
        worker: &str,
        claim_for: Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        if deliveries.is_empty() && notices.is_empty() {
            // Nothing to queue: the claim alone, one statement, no transaction round trips.
            return self.claim_deliveries(worker, now, claim_for, limit).await;
        }
        let mut tx = self.pool.begin().await?;
        fan_out(&mut tx, deliveries, notices, now).await?;
        let stmt = sql::claim_deliveries(worker, now.plus(claim_for), now, limit, CLAIM_LOCK);
        let rows = query(&stmt).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let mut out = rows
            .iter()
            .map(|r| sql::delivery(r, worker))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|d| d.id);
        Ok(out)
    }

    async fn claim_deliveries(
        &self,
        worker: &str,
        now: Timestamp,
        claim_for: Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let stmt = sql::claim_deliveries(worker, now.plus(claim_for), now, limit, CLAIM_LOCK);
        let rows = query(&stmt).fetch_all(&self.pool).await?;
        let mut out = rows
            .iter()
            .map(|r| sql::delivery(r, worker))
            .collect::<Result<Vec<_>, _>>()?;
        // RETURNING does not promise an order; keep the oldest due first.
        out.sort_by_key(|d| d.id);
        Ok(out)
    }

    async fn finish_delivery(
        &self,
        d: &Delivery,
        result: &DeliveryResult,
    ) -> Result<bool, StoreError> {
        let done = query(&sql::finish_delivery(d, result))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn finish_deliveries(
        &self,
        results: &[(Delivery, DeliveryResult)],
    ) -> Result<Vec<bool>, StoreError> {
        if results.is_empty() {
            return Ok(Vec::new());
        }
        let mut changed = std::collections::HashSet::new();
        let mut tx = self.pool.begin().await?;
        let done: Vec<(i64, Timestamp)> = results
            .iter()
            .filter_map(|(d, r)| match r {
                DeliveryResult::Delivered { at } => Some((d.id, *at)),
                DeliveryResult::Failed { .. } => None,
            })
            .collect();
        for chunk in done.chunks(200) {
            for row in query(&sql::finish_delivered(chunk))
                .fetch_all(&mut *tx)
                .await?
            {
                changed.insert(row.int("id")?);
            }
        }
        for (d, r) in results {
            if matches!(r, DeliveryResult::Failed { .. })
                && query(&sql::finish_delivery(d, r))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1
            {
                changed.insert(d.id);
            }
        }
        tx.commit().await?;
        Ok(results
            .iter()
            .map(|(d, _)| changed.contains(&d.id))
            .collect())
    }

    async fn outbox_backlog(&self) -> Result<u64, StoreError> {
        let row = query(&sql::outbox_backlog()).fetch_one(&self.pool).await?;
        Ok(u64::try_from(row.int("backlog")?).unwrap_or(0))
    }

    fn work_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(Arc::clone(&self.work))
    }

    async fn maintain(&self) -> Result<(), StoreError> {
        if !self.self_vacuum {
            return Ok(());
        }
        // SKIP_LOCKED: when several processes get here together, one vacuums a table and the
        // others pass it by instead of queuing behind it. VACUUM takes no lock that blocks
        // claims or writes.
        // A connection of its own, without sqlx's statement log: a vacuum of a big table takes
        // seconds, and a "slow statement" warning every 30 s would bury real ones.
        let started = std::time::Instant::now();
        let options = (*self.pool.connect_options())
            .clone()
            .disable_statement_logging();
        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "VACUUM (ANALYZE, SKIP_LOCKED) {QUEUE_TABLES}"
        )))
        .execute(&mut conn)
        .await?;
        let _ = conn.close().await;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis(),
            "vacuumed the queue tables"
        );
        Ok(())
    }

    // issue 4: catalog and access tokens

    async fn deliveries(&self, order: &OrderId) -> Result<Vec<DeliveryStatus>, StoreError> {
        let rows = query(&sql::deliveries_of(order))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(sql::delivery_status).collect()
    }

    async fn append_timeline(
        &self,
        entries: &[(OrderId, TimelineEntry)],
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (id, e) in entries {
            query(&sql::append_timeline(id, e))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn replace_catalog(&self, packages: &[CatalogPackage]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        query(&sql::delete_catalog()).execute(&mut *tx).await?;
        for p in packages {
            query(&sql::insert_package(p)).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn catalog(&self) -> Result<Vec<CatalogPackage>, StoreError> {
        let rows = query(&sql::catalog()).fetch_all(&self.pool).await?;
        rows.iter().map(sql::catalog_package).collect()
    }

    async fn order_by_ref(&self, order_ref: &OrderRef) -> Result<Option<Order>, StoreError> {
        let row = query(&sql::order_by_ref(order_ref))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(sql::order).transpose()
    }

    async fn rotate_access_token(
        &self,
        id: &OrderId,
        next: &AccessToken,
        entry: &TimelineEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = query(&sql::rotate_access_token(id, next))
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(sql::no_order_for_token(id));
        }
        insert_entries(&mut tx, id, std::slice::from_ref(entry)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn access_token(&self, id: &OrderId) -> Result<Option<AccessToken>, StoreError> {
        let row = query(&sql::access_token_query(id))
            .fetch_optional(&self.pool)
            .await?;
        sql::access_token(row.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_keeps_credentials_and_options() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/postgres?sslmode=disable", "t2"),
            "postgres://u:p@h/t2?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "t3"),
            "postgres://h:5432/t3"
        );
    }
}
