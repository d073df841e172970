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
//! Layout of this file: connection and migrations, row decoding, transaction helpers, then the
//! `Store` impl with one method per trait method (new trait methods go at its end, with their
//! SQL next to them).

use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, PgPool, Row};

use super::{
    AccessToken, Change, Claimed, Delivery, DeliveryResult, Flight, Intake, Lease, NewDelivery,
    Notice, OrderFilter, Recorded, StateCounts, Store, StoreError, access_token_from, redact_url,
};
use crate::clock::Timestamp;
use crate::domain::{
    CatalogPackage, Customer, Failure, NoticeKind, Order, OrderId, OrderRef, OrderState, PackageId,
    PackageName, Phase, Purchase, PurchaseIntent, PurchaseOutcome, RamGb, Resolution,
    TimelineEntry,
};

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

const ORDER_COLUMNS: &str = "id, order_ref, fingerprint, package_id, ram_gb, customer_email, customer_name, os, state, buy_attempts, \
     status_attempts, server_ip, failure_phase, failure_reason, run_at, created_at, updated_at, ready_at, storefront";

/// The states a worker claims; the same list as the partial index `orders_due`, so the claim uses it.
const ACTIVE_STATES: &str = "('queued', 'buying', 'awaiting_credentials')";

/// The PostgreSQL store.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    /// Shared by every worker task, the API and the dispatcher of this process.
    pool: PgPool,
    /// The server's `autovacuum` was off at connect: [`Store::maintain`] vacuums instead.
    self_vacuum: bool,
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
        let shown = redact_url(url);
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
        let store = Self { pool, self_vacuum };
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
// Row decoding.

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn ip_col(row: &PgRow, col: &str) -> Result<Option<Ipv4Addr>, StoreError> {
    let v: Option<String> = row.try_get(col)?;
    v.map(|s| s.parse().map_err(|e| corrupt(col, e)))
        .transpose()
}

fn u32_col(row: &PgRow, col: &str) -> Result<u32, StoreError> {
    u32::try_from(row.try_get::<i64, _>(col)?).map_err(|e| corrupt(col, e))
}

fn order_from(row: &PgRow) -> Result<Order, StoreError> {
    let state: String = row.try_get("state")?;
    let phase: Option<String> = row.try_get("failure_phase")?;
    let reason: Option<String> = row.try_get("failure_reason")?;
    let failure = match phase {
        Some(ph) => Some(Failure {
            phase: Phase::from_str(&ph).map_err(|e| corrupt("failure_phase", e))?,
            reason: reason.unwrap_or_default(),
        }),
        None => None,
    };
    let ram: i64 = row.try_get("ram_gb")?;
    let opt_ts = |col: &str| -> Result<Option<Timestamp>, StoreError> {
        Ok(row.try_get::<Option<i64>, _>(col)?.map(Timestamp))
    };
    Ok(Order {
        id: OrderId::parse(row.try_get("id")?).map_err(|e| corrupt("id", e))?,
        order_ref: OrderRef::parse(row.try_get("order_ref")?)
            .map_err(|e| corrupt("order_ref", e))?,
        fingerprint: row.try_get("fingerprint")?,
        package_id: PackageId(u32_col(row, "package_id")?),
        ram_gb: RamGb::parse(ram).map_err(|e| corrupt("ram_gb", e))?,
        customer: Customer {
            email: row.try_get("customer_email")?,
            name: row.try_get("customer_name")?,
        },
        os: row.try_get("os")?,
        storefront: row.try_get("storefront")?,
        state: OrderState::from_str(&state).map_err(|e| corrupt("state", e))?,
        buy_attempts: u32_col(row, "buy_attempts")?,
        status_attempts: u32_col(row, "status_attempts")?,
        server_ip: ip_col(row, "server_ip")?,
        failure,
        run_at: opt_ts("run_at")?,
        created_at: Timestamp(row.try_get("created_at")?),
        updated_at: Timestamp(row.try_get("updated_at")?),
        ready_at: opt_ts("ready_at")?,
    })
}

fn purchase_from(row: &PgRow) -> Result<Purchase, StoreError> {
    let outcome_kind: Option<String> = row.try_get("outcome")?;
    let reason: Option<String> = row.try_get("outcome_reason")?;
    let outcome_ip = ip_col(row, "outcome_ip")?;
    let outcome = outcome_kind
        .as_deref()
        .map(|kind| PurchaseOutcome::from_parts(kind, outcome_ip, reason))
        .transpose()
        .map_err(|e| corrupt("outcome", e))?;
    let res_kind: Option<String> = row.try_get("resolution")?;
    let detail: Option<String> = row.try_get("resolution_detail")?;
    let resolution = res_kind
        .as_deref()
        .map(|kind| Resolution::from_parts(kind, detail))
        .transpose()
        .map_err(|e| corrupt("resolution", e))?;
    let name: String = row.try_get("package_name")?;
    Ok(Purchase {
        id: row.try_get("id")?,
        order_id: OrderId::parse(row.try_get("order_id")?).map_err(|e| corrupt("order_id", e))?,
        attempt: u32_col(row, "attempt")?,
        package_id: PackageId(u32_col(row, "package_id")?),
        package_name: PackageName::parse(&name).map_err(|e| corrupt("package_name", e))?,
        stock_before: row
            .try_get::<Option<i64>, _>("stock_before")?
            .and_then(|v| u32::try_from(v).ok()),
        pool_before: row
            .try_get::<Option<i64>, _>("pool_before")?
            .and_then(|v| u64::try_from(v).ok()),
        sent_at: Timestamp(row.try_get("sent_at")?),
        outcome,
        decided_at: row.try_get::<Option<i64>, _>("decided_at")?.map(Timestamp),
        resolution,
        late_ip: ip_col(row, "late_ip")?,
    })
}

fn delivery_from(row: &PgRow, worker: &str) -> Result<Delivery, StoreError> {
    let kind: String = row.try_get("kind")?;
    let order_id: Option<String> = row.try_get("order_id")?;
    Ok(Delivery {
        id: row.try_get("id")?,
        key: row.try_get("key")?,
        event_id: row.try_get("event_id")?,
        order_id: order_id
            .map(|s| OrderId::parse(&s).map_err(|e| corrupt("outbox_deliveries.order_id", e)))
            .transpose()?,
        kind: NoticeKind::parse(&kind).ok_or_else(|| corrupt("outbox_deliveries.kind", &kind))?,
        channel: row.try_get("channel")?,
        detail: row.try_get("detail")?,
        created_at: Timestamp(row.try_get("created_at")?),
        attempt: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
        worker: worker.to_string(),
        token: row.try_get("claim_token")?,
    })
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Transaction helpers.

type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

/// Checks the fence and row-locks the order for the rest of the transaction.
async fn lock_leased(tx: &mut Tx, lease: &Lease) -> Result<(), StoreError> {
    let ok: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM orders WHERE id = $1 AND lease_token = $2 AND lease_owner = $3 FOR NO KEY UPDATE",
    )
    .bind(lease.order_id.as_str())
    .bind(lease.token)
    .bind(&lease.worker)
    .fetch_optional(&mut **tx)
    .await?;
    ok.map(|_| ())
        .ok_or_else(|| StoreError::LeaseLost(lease.order_id.clone()))
}

/// Which writer is writing the order row: decides the extra `WHERE` of the order update.
#[derive(Clone, Copy)]
enum Writer<'a> {
    /// A worker: the update only applies under its lease (the fence).
    Leased(&'a Lease),
    /// An admin change, already checked (and the token bumped) in this transaction.
    Checked,
}

/// Writes the order's mutable columns and everything in `change`. A leased write that matches no
/// row (the token moved on) is [`StoreError::LeaseLost`] and the caller's transaction is dropped,
/// so nothing of it is kept.
async fn write(
    tx: &mut Tx,
    writer: Writer<'_>,
    order: &Order,
    change: Change,
    now: Timestamp,
) -> Result<(), StoreError> {
    let mut q = String::from(
        "UPDATE orders SET state = $2, buy_attempts = $3, status_attempts = $4, server_ip = $5, failure_phase = $6, \
         failure_reason = $7, run_at = $8, updated_at = $9, ready_at = $10",
    );
    // Placeholders are numbered as they are added: PostgreSQL refuses a statement with a gap.
    let mut next = 10;
    let mut param = || {
        next += 1;
        format!("${next}")
    };
    if change.credentials.is_some() {
        q.push_str(&format!(", credentials = {}", param()));
    }
    if !change.keep_lease {
        q.push_str(", lease_owner = NULL, lease_expires_at = NULL");
    }
    q.push_str(" WHERE id = $1");
    if let Writer::Leased(_) = writer {
        q.push_str(&format!(
            " AND lease_token = {} AND lease_owner = {}",
            param(),
            param()
        ));
    }
    let mut query = sqlx::query(sqlx::AssertSqlSafe(q))
        .bind(order.id.as_str())
        .bind(order.state.as_str())
        .bind(i64::from(order.buy_attempts))
        .bind(i64::from(order.status_attempts))
        .bind(order.server_ip.map(|ip| ip.to_string()))
        .bind(order.failure.as_ref().map(|f| f.phase.as_str()))
        .bind(order.failure.as_ref().map(|f| f.reason.clone()))
        .bind(order.run_at.map(Timestamp::millis))
        .bind(order.updated_at.millis())
        .bind(order.ready_at.map(Timestamp::millis));
    if let Some(c) = &change.credentials {
        query = query.bind(c.clone());
    }
    if let Writer::Leased(lease) = writer {
        query = query.bind(lease.token).bind(lease.worker.as_str());
    }
    let done = query.execute(&mut **tx).await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::LeaseLost(order.id.clone()));
    }
    insert_entries(tx, &order.id, &change.entries).await?;
    if order.state != OrderState::Buying || change.release_flight {
        sqlx::query("DELETE FROM flights WHERE order_id = $1")
            .bind(order.id.as_str())
            .execute(&mut **tx)
            .await?;
    }
    if let Some((pid, res)) = change.resolve {
        sqlx::query(
            "UPDATE purchases SET resolution = $1, resolution_detail = $2 WHERE id = $3 AND order_id = $4",
        )
        .bind(res.kind())
        .bind(res.detail())
        .bind(pid)
        .bind(order.id.as_str())
        .execute(&mut **tx)
        .await?;
    }
    insert_notices(tx, &order.id, &change.notices, now).await
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
        // ON CONFLICT rather than look-then-insert: two processes receiving the same webhook at
        // once both reach this line, and the second waits for the first's commit instead of
        // failing on the unique index.
        let inserted = sqlx::query(
            "INSERT INTO orders (id, order_ref, fingerprint, package_id, ram_gb, customer_email, customer_name, os, state, run_at, \
             created_at, updated_at, storefront, access_token_hash, access_token_gen) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) ON CONFLICT (order_ref) DO NOTHING",
        )
        .bind(order.id.as_str())
        .bind(order.order_ref.as_str())
        .bind(&order.fingerprint)
        .bind(i64::from(order.package_id.0))
        .bind(i64::from(order.ram_gb.get()))
        .bind(&order.customer.email)
        .bind(&order.customer.name)
        .bind(&order.os)
        .bind(order.state.as_str())
        .bind(order.run_at.map(Timestamp::millis))
        .bind(order.created_at.millis())
        .bind(order.updated_at.millis())
        .bind(&order.storefront)
        .bind(&access.hash)
        .bind(access.generation.map(i64::from))
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            let q = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE order_ref = $1");
            let row = sqlx::query(sqlx::AssertSqlSafe(q))
                .bind(order.order_ref.as_str())
                .fetch_one(&mut *tx)
                .await?;
            let existing = order_from(&row)?;
            return Ok(if existing.fingerprint == order.fingerprint {
                Intake::Existing(existing)
            } else {
                Intake::Conflict(existing)
            });
        }
        insert_entries(&mut tx, &order.id, entries).await?;
        insert_notices(&mut tx, &order.id, notices, order.created_at).await?;
        tx.commit().await?;
        Ok(Intake::Created(order.clone()))
    }

    async fn order(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        let q = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1");
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(order_from)
            .transpose()
    }

    async fn orders(&self, f: &OrderFilter) -> Result<Vec<Order>, StoreError> {
        let q = format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE ($1::text IS NULL OR state = $1) AND ($2::bigint IS NULL OR package_id = $2) \
             AND ($3::bigint IS NULL OR created_at >= $3) AND ($4::bigint IS NULL OR created_at < $4) \
             ORDER BY created_at DESC, id DESC LIMIT $5 OFFSET $6"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(f.state.map(OrderState::as_str))
            .bind(f.package.map(|p| i64::from(p.0)))
            .bind(f.created_from.map(Timestamp::millis))
            .bind(f.created_to.map(Timestamp::millis))
            .bind(limit_of(f.page_size()))
            .bind(limit_of(f.offset.unwrap_or(0)))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(order_from).collect()
    }

    async fn state_counts(&self) -> Result<StateCounts, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM orders GROUP BY state")
                .fetch_all(&self.pool)
                .await?;
        Ok(super::state_counts_from(&rows))
    }

    async fn timeline(&self, id: &OrderId) -> Result<Vec<TimelineEntry>, StoreError> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT at, kind, message FROM timeline WHERE order_id = $1 ORDER BY id",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(super::timeline_entry).collect())
    }

    async fn purchases(&self, id: &OrderId) -> Result<Vec<Purchase>, StoreError> {
        let rows = sqlx::query("SELECT * FROM purchases WHERE order_id = $1 ORDER BY id")
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(purchase_from).collect()
    }

    async fn credentials(&self, id: &OrderId) -> Result<Option<Vec<u8>>, StoreError> {
        let v: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT credentials FROM orders WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(v.flatten())
    }

    async fn claim_due(
        &self,
        worker: &str,
        now: Timestamp,
        lease_for: Duration,
        limit: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        let expires = now.plus(lease_for);
        // SKIP LOCKED: rows another process is claiming or writing right now are passed over,
        // not waited for; under READ COMMITTED a row updated since the snapshot is re-checked
        // against the WHERE before it is locked, so a lease taken meanwhile is respected.
        let q = format!(
            "UPDATE orders SET lease_owner = $1, lease_token = lease_token + 1, lease_expires_at = $2 WHERE id IN (\
               SELECT id FROM orders WHERE state IN {ACTIVE_STATES} AND run_at <= $3 \
               AND (lease_expires_at IS NULL OR lease_expires_at <= $3) ORDER BY run_at LIMIT $4 FOR UPDATE SKIP LOCKED) \
             RETURNING {ORDER_COLUMNS}, lease_token"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(worker)
            .bind(expires.millis())
            .bind(now.millis())
            .bind(limit_of(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let order = order_from(row)?;
                let lease = Lease {
                    order_id: order.id.clone(),
                    worker: worker.to_string(),
                    token: row.try_get("lease_token")?,
                    expires_at: expires,
                };
                Ok(Claimed { lease, order })
            })
            .collect()
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let q = format!(
            "SELECT MIN(GREATEST(run_at, COALESCE(lease_expires_at, run_at))) FROM orders \
             WHERE state IN {ACTIVE_STATES} AND run_at IS NOT NULL"
        );
        let v: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(q))
            .fetch_one(&self.pool)
            .await?;
        Ok(v.map(Timestamp))
    }

    async fn save(&self, lease: &Lease, order: &Order, change: Change) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        write(
            &mut tx,
            Writer::Leased(lease),
            order,
            change,
            order.updated_at,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE orders SET lease_owner = NULL, lease_expires_at = NULL WHERE id = $1 AND lease_token = $2 AND lease_owner = $3",
        )
        .bind(lease.order_id.as_str())
        .bind(lease.token)
        .bind(&lease.worker)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            Err(StoreError::LeaseLost(lease.order_id.clone()))
        } else {
            Ok(())
        }
    }

    async fn acquire_flight(
        &self,
        lease: &Lease,
        package: PackageId,
    ) -> Result<Flight, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_leased(&mut tx, lease).await?;
        // A concurrent insert for the same package makes this wait for that transaction's end,
        // then do nothing (it committed) or insert (it rolled back): never two holders.
        sqlx::query(
            "INSERT INTO flights (package_id, order_id) VALUES ($1, $2) ON CONFLICT (package_id) DO NOTHING",
        )
        .bind(i64::from(package.0))
        .bind(lease.order_id.as_str())
        .execute(&mut *tx)
        .await?;
        // A new statement sees rows committed since the insert began, so this reads the holder.
        let holder: String =
            sqlx::query_scalar("SELECT order_id FROM flights WHERE package_id = $1")
                .bind(i64::from(package.0))
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        if holder == lease.order_id.as_str() {
            Ok(Flight::Granted)
        } else {
            Ok(Flight::HeldBy(
                OrderId::parse(&holder).map_err(|e| corrupt("flights.order_id", e))?,
            ))
        }
    }

    async fn begin_purchase(
        &self,
        lease: &Lease,
        order: &Order,
        intent: &PurchaseIntent,
        entries: &[TimelineEntry],
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The fenced order write comes first: if the lease is gone no intent is written.
        let change = Change {
            entries: entries.to_vec(),
            keep_lease: true,
            ..Change::default()
        };
        write(
            &mut tx,
            Writer::Leased(lease),
            order,
            change,
            intent.sent_at,
        )
        .await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO purchases (order_id, attempt, package_id, package_name, stock_before, pool_before, sent_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(intent.order_id.as_str())
        .bind(i64::from(intent.attempt))
        .bind(i64::from(intent.package_id.0))
        .bind(intent.package_name.as_str())
        .bind(intent.stock_before.map(i64::from))
        .bind(intent.pool_before.and_then(|v| i64::try_from(v).ok()))
        .bind(intent.sent_at.millis())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn record_outcome(
        &self,
        purchase_id: i64,
        outcome: &PurchaseOutcome,
        at: Timestamp,
    ) -> Result<Recorded, StoreError> {
        let (ip, reason) = match outcome {
            PurchaseOutcome::Succeeded { ip } => (Some(ip.to_string()), None),
            PurchaseOutcome::Rejected { reason } | PurchaseOutcome::Unknown { reason } => {
                (None, Some(reason.clone()))
            }
        };
        // One statement, so first-writer-wins holds across processes: the second writer blocks on
        // the row lock, re-reads `outcome IS NULL` as false and updates nothing.
        let done = sqlx::query(
            "UPDATE purchases SET outcome = $1, outcome_ip = $2, outcome_reason = $3, decided_at = $4 WHERE id = $5 AND outcome IS NULL",
        )
        .bind(outcome.kind())
        .bind(&ip)
        .bind(&reason)
        .bind(at.millis())
        .bind(purchase_id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(Recorded::Recorded);
        }
        if let Some(ip) = ip {
            sqlx::query("UPDATE purchases SET late_ip = $1 WHERE id = $2")
                .bind(ip)
                .bind(purchase_id)
                .execute(&self.pool)
                .await?;
        }
        Ok(Recorded::AlreadyDecided)
    }

    async fn owner_of(&self, ip: Ipv4Addr) -> Result<Option<OrderId>, StoreError> {
        let ip = ip.to_string();
        let v: Option<String> = sqlx::query_scalar(
            "SELECT id FROM orders WHERE server_ip = $1 UNION ALL \
             SELECT order_id FROM purchases WHERE outcome_ip = $1 OR late_ip = $1 LIMIT 1",
        )
        .bind(&ip)
        .fetch_optional(&self.pool)
        .await?;
        v.map(|s| OrderId::parse(&s).map_err(|e| corrupt("order id", e)))
            .transpose()
    }

    async fn admin_save(
        &self,
        order: &Order,
        expected_updated_at: Timestamp,
        now: Timestamp,
        change: Change,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Bumping the token is what fences out a worker whose lease expired but who is still
        // running: its next write no longer matches.
        let done = sqlx::query(
            "UPDATE orders SET lease_token = lease_token + 1, lease_owner = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND updated_at = $2 AND (lease_expires_at IS NULL OR lease_expires_at <= $3)",
        )
        .bind(order.id.as_str())
        .bind(expected_updated_at.millis())
        .bind(now.millis())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(order.id.clone()));
        }
        write(
            &mut tx,
            Writer::Checked,
            order,
            Change {
                keep_lease: false,
                ..change
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn due_notices(&self, now: Timestamp, limit: usize) -> Result<Vec<Notice>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, order_id, kind, attempts FROM outbox WHERE next_at IS NOT NULL AND next_at <= $1 ORDER BY next_at, id LIMIT $2",
        )
        .bind(now.millis())
        .bind(limit_of(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get("kind")?;
                Ok(Notice {
                    id: r.try_get("id")?,
                    order_id: OrderId::parse(r.try_get("order_id")?)
                        .map_err(|e| corrupt("outbox.order_id", e))?,
                    kind: NoticeKind::parse(&kind).ok_or_else(|| corrupt("outbox.kind", &kind))?,
                    attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn notice_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, next_at = $1, last_error = $2 WHERE id = $3",
        )
        .bind(retry_at.map(Timestamp::millis))
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // issue 5: outbox deliveries

    async fn fan_out(
        &self,
        deliveries: &[NewDelivery],
        notices: &[i64],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
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
            .execute(&mut *tx)
            .await?;
        }
        if !notices.is_empty() {
            sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, next_at = NULL, delivered_at = $1 WHERE id = ANY($2)",
            )
            .bind(now.millis())
            .bind(notices)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn claim_deliveries(
        &self,
        worker: &str,
        now: Timestamp,
        claim_for: Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        // SKIP LOCKED: dispatchers in several processes each take different rows.
        let rows = sqlx::query(
            "UPDATE outbox_deliveries SET claimed_by = $1, claim_token = claim_token + 1, claim_expires_at = $2, \
               attempts = attempts + 1 WHERE id IN (\
               SELECT id FROM outbox_deliveries WHERE next_at IS NOT NULL AND next_at <= $3 \
               AND (claim_expires_at IS NULL OR claim_expires_at <= $3) ORDER BY next_at, id LIMIT $4 FOR UPDATE SKIP LOCKED) \
             RETURNING id, key, event_id, order_id, kind, channel, detail, created_at, attempts, claim_token",
        )
        .bind(worker)
        .bind(now.plus(claim_for).millis())
        .bind(now.millis())
        .bind(limit_of(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| delivery_from(r, worker))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|d| d.id);
        Ok(out)
    }

    async fn finish_delivery(
        &self,
        d: &Delivery,
        result: &DeliveryResult,
    ) -> Result<bool, StoreError> {
        let done = match result {
            DeliveryResult::Delivered { at } => {
                sqlx::query(
                    "UPDATE outbox_deliveries SET delivered_at = $1, next_at = NULL, last_error = NULL, claimed_by = NULL, \
                     claim_expires_at = NULL WHERE id = $2 AND delivered_at IS NULL",
                )
                .bind(at.millis())
                .bind(d.id)
                .execute(&self.pool)
                .await?
            }
            DeliveryResult::Failed { error, retry_at } => {
                sqlx::query(
                    "UPDATE outbox_deliveries SET next_at = $1, last_error = $2, claimed_by = NULL, claim_expires_at = NULL \
                     WHERE id = $3 AND claim_token = $4 AND claimed_by = $5 AND delivered_at IS NULL",
                )
                .bind(retry_at.map(Timestamp::millis))
                .bind(error)
                .bind(d.id)
                .bind(d.token)
                .bind(&d.worker)
                .execute(&self.pool)
                .await?
            }
        };
        Ok(done.rows_affected() == 1)
    }

    async fn outbox_backlog(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM outbox WHERE next_at IS NOT NULL) \
             + (SELECT COUNT(*) FROM outbox_deliveries WHERE next_at IS NOT NULL)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
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

    async fn replace_catalog(&self, packages: &[CatalogPackage]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM packages")
            .execute(&mut *tx)
            .await?;
        for p in packages {
            sqlx::query("INSERT INTO packages (id, name, free, status, synced_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(i64::from(p.id.0))
                .bind(&p.name)
                .bind(i64::from(p.free))
                .bind(p.status())
                .bind(p.synced_at.millis())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn catalog(&self) -> Result<Vec<CatalogPackage>, StoreError> {
        let rows =
            sqlx::query("SELECT id, name, free, status, synced_at FROM packages ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                let id: i64 = r.try_get("id")?;
                let status: String = r.try_get("status")?;
                Ok(CatalogPackage {
                    id: PackageId(u32::try_from(id).map_err(|e| corrupt("packages.id", e))?),
                    name: r.try_get("name")?,
                    free: u32::try_from(r.try_get::<i64, _>("free")?).unwrap_or(0),
                    active: status == "active",
                    synced_at: Timestamp(r.try_get("synced_at")?),
                })
            })
            .collect()
    }

    async fn order_by_ref(&self, order_ref: &OrderRef) -> Result<Option<Order>, StoreError> {
        let q = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE order_ref = $1");
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(order_ref.as_str())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(order_from)
            .transpose()
    }

    async fn rotate_access_token(
        &self,
        id: &OrderId,
        next: &AccessToken,
        entry: &TimelineEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE orders SET access_token_hash = $1, access_token_gen = $2 WHERE id = $3",
        )
        .bind(&next.hash)
        .bind(next.generation.map(i64::from))
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Corrupt(format!(
                "no order {id} to hold an access token"
            )));
        }
        insert_entries(&mut tx, id, std::slice::from_ref(entry)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn access_token(&self, id: &OrderId) -> Result<Option<AccessToken>, StoreError> {
        let row: Option<(Option<String>, Option<i64>)> =
            sqlx::query_as("SELECT access_token_hash, access_token_gen FROM orders WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        access_token_from(row)
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
