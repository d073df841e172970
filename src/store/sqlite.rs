//! The SQLite store: the embedded default. WAL mode, one file, migrations embedded in the binary.
//!
//! Claims are a single `UPDATE ... RETURNING` (atomic in SQLite); multi-statement writes run in
//! `BEGIN IMMEDIATE` transactions so two writers never deadlock upgrading a read lock. Every
//! timestamp is bound from the `Clock`; SQL's own notion of now is never used.

use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row, SqliteConnection, SqlitePool};
use tokio::sync::OwnedMutexGuard;

use super::{
    AccessToken, Change, Claimed, Delivery, DeliveryResult, Flight, Intake, Lease, NewDelivery,
    Notice, OrderFilter, Recorded, StateCounts, Store, StoreError, access_token_from,
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
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "catalog_access",
        include_str!("../../migrations/sqlite/0002_catalog_access.sql"),
    ),
    (
        3,
        "outbox_deliveries",
        include_str!("../../migrations/sqlite/0003_outbox_deliveries.sql"),
    ),
    (
        4,
        "purchases_late_ip",
        include_str!("../../migrations/sqlite/0004_purchases_late_ip.sql"),
    ),
    (
        5,
        "storefront_tokens",
        include_str!("../../migrations/sqlite/0005_storefront_tokens.sql"),
    ),
];

/// Rows per multi-row statement: at most 9 parameters a row stays far below SQLite's limit
/// (32,766 parameters since 3.32).
const ROWS_PER_INSERT: usize = 100;

const ORDER_COLUMNS: &str = "id, order_ref, fingerprint, package_id, ram_gb, customer_email, customer_name, os, state, buy_attempts, \
     status_attempts, server_ip, failure_phase, failure_reason, run_at, created_at, updated_at, ready_at, storefront";

/// The SQLite store.
///
/// Reads and writes use separate connections. Every write (every transaction and every
/// single-statement write) runs on one **writer** connection that this store holds itself,
/// taken in turn through an in-process queue. SQLite admits one writer anyway; the queue and the
/// single connection buy three things (measured in `docs/benchmarks.md`):
/// - no busy-handler sleeps: a writer that finds the database locked would sleep in SQLite's busy
///   handler (1, 2, 5, 10 ... ms) although the holder is done within a millisecond, and
///   throughput would collapse as workers are added;
/// - a warm page cache: in WAL mode a connection discards its whole page cache whenever it sees
///   that *another* connection wrote. With writes spread over a pool, every write started cold and
///   re-read the B-tree pages it touched, a cost that grew with the database. The writer's own
///   commits leave its cache valid;
/// - no pool round trips: a sqlx pool pings a connection when it is taken and again when it is
///   given back, each a hop to the connection's thread, as costly as a statement. Writes are
///   serialized, so those hops were paid inside every write's turn.
///
/// Other processes (`orders` CLI commands) still meet `busy_timeout`.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// Reads: several connections, each reading a consistent WAL snapshot.
    pool: SqlitePool,
    /// Writes: the one connection, and the queue for it (first come, first served).
    writer: Arc<tokio::sync::Mutex<Writer>>,
}

/// Pages the writer connection may cache, in KiB (SQLite's negative `cache_size`): enough for
/// the hot B-tree pages of a few hundred thousand orders; it fills only as pages are touched.
const WRITER_CACHE_KIB: i64 = 16 * 1024;

/// How often, at most, a turn checks that the writer connection's thread is alive. A check is a
/// round trip; a dead thread (a crash inside the driver) would otherwise fail every write.
const WRITER_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The writer connection and how to open it again.
#[derive(Debug)]
struct Writer {
    conn: SqliteConnection,
    options: SqliteConnectOptions,
    checked_at: std::time::Instant,
}

/// A turn on the writer connection; the next writer's turn starts when it is dropped. Derefs to
/// the connection, so `&mut *turn` executes statements.
pub struct WriteTurn(OwnedMutexGuard<Writer>);

impl WriteTurn {
    /// Opens a `BEGIN IMMEDIATE` transaction: the write lock is taken at the start, so the
    /// transaction never fails later upgrading a read lock.
    async fn begin(&mut self) -> Result<Tx<'_>, StoreError> {
        Ok(self.0.conn.begin_with("BEGIN IMMEDIATE").await?)
    }
}

impl std::ops::Deref for WriteTurn {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.0.conn
    }
}

impl std::ops::DerefMut for WriteTurn {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.0.conn
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `url` (`sqlite://path`) and applies
    /// migrations.
    ///
    /// # Errors
    /// When the file cannot be opened or a migration fails, or for an in-memory URL: such a
    /// database would lose every order when the process exits.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(StoreError::Database(format!(
                "database url {url:?} names an in-memory SQLite database, which would lose every order at exit; name a file (sqlite://provisioner.db)"
            )));
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Database(format!("bad database url {url:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let cannot_open = |e: sqlx::Error| StoreError::Database(format!("cannot open {url}: {e}"));
        let writer_options = options
            .clone()
            .pragma("cache_size", format!("-{WRITER_CACHE_KIB}"));
        // The writer first: it creates the file and switches it to WAL.
        let conn = SqliteConnection::connect_with(&writer_options)
            .await
            .map_err(cannot_open)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(0)
            // A local file has no peer to hang up: a liveness ping per borrow is a wasted hop.
            .test_before_acquire(false)
            .idle_timeout(Some(Duration::from_secs(600)))
            .max_lifetime(Some(Duration::from_secs(3600)))
            .connect_with(options)
            .await
            .map_err(cannot_open)?;
        let store = Self {
            pool,
            writer: Arc::new(tokio::sync::Mutex::new(Writer {
                conn,
                options: writer_options,
                checked_at: std::time::Instant::now(),
            })),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut turn = self.write_turn().await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)")
            .execute(&mut *turn)
            .await?;
        for (version, name, sql) in MIGRATIONS {
            let mut tx = turn.begin().await?;
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = ?")
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await?;
            if done.is_none() {
                sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| {
                        StoreError::Database(format!("migration {version} ({name}) failed: {e}"))
                    })?;
                sqlx::query("INSERT INTO schema_migrations (version, name) VALUES (?, ?)")
                    .bind(version)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                tracing::info!(version, name, "applied database migration");
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// The readers' pool, for benchmarks that measure the raw commit rate of the same database.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Waits for this process's turn to write, then hands over the writer connection. Public for
    /// the benchmark that measures the raw commit rate through the same connection.
    ///
    /// # Errors
    /// When the writer connection's thread died and the file cannot be opened again.
    pub async fn write_turn(&self) -> Result<WriteTurn, StoreError> {
        let mut writer = Arc::clone(&self.writer).lock_owned().await;
        if writer.checked_at.elapsed() >= WRITER_CHECK_EVERY {
            if let Err(e) = writer.conn.ping().await {
                tracing::warn!(error = %e, "the SQLite writer connection is gone; opening it again");
                writer.conn = SqliteConnection::connect_with(&writer.options).await?;
            }
            writer.checked_at = std::time::Instant::now();
        }
        Ok(WriteTurn(writer))
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn ip_col(row: &SqliteRow, col: &str) -> Result<Option<Ipv4Addr>, StoreError> {
    let v: Option<String> = row.try_get(col)?;
    v.map(|s| s.parse().map_err(|e| corrupt(col, e)))
        .transpose()
}

fn order_from(row: &SqliteRow) -> Result<Order, StoreError> {
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
    let pkg: i64 = row.try_get("package_id")?;
    let ram: i64 = row.try_get("ram_gb")?;
    let opt_ts = |col: &str| -> Result<Option<Timestamp>, StoreError> {
        Ok(row.try_get::<Option<i64>, _>(col)?.map(Timestamp))
    };
    Ok(Order {
        id: OrderId::parse(row.try_get("id")?).map_err(|e| corrupt("id", e))?,
        order_ref: OrderRef::parse(row.try_get("order_ref")?)
            .map_err(|e| corrupt("order_ref", e))?,
        fingerprint: row.try_get("fingerprint")?,
        package_id: PackageId(u32::try_from(pkg).map_err(|e| corrupt("package_id", e))?),
        ram_gb: RamGb::parse(ram).map_err(|e| corrupt("ram_gb", e))?,
        customer: Customer {
            email: row.try_get("customer_email")?,
            name: row.try_get("customer_name")?,
        },
        os: row.try_get("os")?,
        storefront: row.try_get("storefront")?,
        state: OrderState::from_str(&state).map_err(|e| corrupt("state", e))?,
        buy_attempts: u32::try_from(row.try_get::<i64, _>("buy_attempts")?).unwrap_or(0),
        status_attempts: u32::try_from(row.try_get::<i64, _>("status_attempts")?).unwrap_or(0),
        server_ip: ip_col(row, "server_ip")?,
        failure,
        run_at: opt_ts("run_at")?,
        created_at: Timestamp(row.try_get("created_at")?),
        updated_at: Timestamp(row.try_get("updated_at")?),
        ready_at: opt_ts("ready_at")?,
    })
}

fn purchase_from(row: &SqliteRow) -> Result<Purchase, StoreError> {
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
        attempt: u32::try_from(row.try_get::<i64, _>("attempt")?).unwrap_or(0),
        package_id: PackageId(
            u32::try_from(row.try_get::<i64, _>("package_id")?)
                .map_err(|e| corrupt("package_id", e))?,
        ),
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

fn delivery_from(row: &SqliteRow, worker: &str) -> Result<Delivery, StoreError> {
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

type Tx<'c> = sqlx::Transaction<'c, sqlx::Sqlite>;

/// Writes the order's mutable columns and everything in `change` (the caller checked the fence
/// or has no lease to check: admin changes).
async fn write(
    tx: &mut Tx<'_>,
    order: &Order,
    change: Change,
    now: Timestamp,
) -> Result<(), StoreError> {
    write_order(tx, None, order, change, now).await
}

/// As [`write`], with the fence checked by the order update itself when `fence` is given: one
/// statement instead of a check and an update, and writes serialize on this process's turn, so
/// every statement saved is throughput (see `docs/benchmarks.md`).
async fn write_order(
    tx: &mut Tx<'_>,
    fence: Option<&Lease>,
    order: &Order,
    change: Change,
    now: Timestamp,
) -> Result<(), StoreError> {
    let mut q = String::from(
        "UPDATE orders SET state = ?, buy_attempts = ?, status_attempts = ?, server_ip = ?, failure_phase = ?, failure_reason = ?, \
         run_at = ?, updated_at = ?, ready_at = ?",
    );
    if change.credentials.is_some() {
        q.push_str(", credentials = ?");
    }
    if !change.keep_lease {
        q.push_str(", lease_owner = NULL, lease_expires_at = NULL");
    }
    q.push_str(" WHERE id = ?");
    if fence.is_some() {
        q.push_str(" AND lease_token = ? AND lease_owner = ?");
    }
    let mut query = sqlx::query(sqlx::AssertSqlSafe(q))
        .bind(order.state.as_str())
        .bind(i64::from(order.buy_attempts))
        .bind(i64::from(order.status_attempts))
        .bind(order.server_ip.map(|ip| ip.to_string()))
        .bind(order.failure.as_ref().map(|f| f.phase.as_str()))
        .bind(order.failure.as_ref().map(|f| f.reason.clone()))
        .bind(order.run_at.map(Timestamp::millis))
        .bind(order.updated_at.millis())
        .bind(order.ready_at.map(Timestamp::millis));
    if let Some(c) = change.credentials {
        query = query.bind(c);
    }
    query = query.bind(order.id.as_str());
    if let Some(lease) = fence {
        query = query.bind(lease.token).bind(lease.worker.as_str());
    }
    let done = query.execute(&mut **tx).await?;
    if fence.is_some() && done.rows_affected() == 0 {
        return Err(StoreError::LeaseLost(order.id.clone()));
    }
    insert_entries(tx, &order.id, &change.entries).await?;
    if order.state != OrderState::Buying || change.release_flight {
        sqlx::query("DELETE FROM flights WHERE order_id = ?")
            .bind(order.id.as_str())
            .execute(&mut **tx)
            .await?;
    }
    if let Some((pid, res)) = change.resolve {
        sqlx::query("UPDATE purchases SET resolution = ?, resolution_detail = ? WHERE id = ? AND order_id = ?")
            .bind(res.kind())
            .bind(res.detail())
            .bind(pid)
            .bind(order.id.as_str())
            .execute(&mut **tx)
            .await?;
    }
    insert_notices(tx, &order.id, &change.notices, now).await
}

async fn insert_entries(
    tx: &mut Tx<'_>,
    id: &OrderId,
    entries: &[TimelineEntry],
) -> Result<(), StoreError> {
    // One multi-row INSERT per chunk rather than one per line: a step writes up to a dozen lines.
    for chunk in entries.chunks(ROWS_PER_INSERT) {
        let mut q = String::from("INSERT INTO timeline (order_id, at, kind, message) VALUES ");
        q.push_str(&vec!["(?, ?, ?, ?)"; chunk.len()].join(", "));
        let mut query = sqlx::query(sqlx::AssertSqlSafe(q));
        for e in chunk {
            query = query
                .bind(id.as_str())
                .bind(e.at.millis())
                .bind(e.kind.as_str())
                .bind(&e.message);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

async fn insert_notices(
    tx: &mut Tx<'_>,
    id: &OrderId,
    notices: &[NoticeKind],
    now: Timestamp,
) -> Result<(), StoreError> {
    for chunk in notices.chunks(ROWS_PER_INSERT) {
        let mut q =
            String::from("INSERT INTO outbox (order_id, kind, created_at, next_at) VALUES ");
        q.push_str(&vec!["(?, ?, ?, ?)"; chunk.len()].join(", "));
        let mut query = sqlx::query(sqlx::AssertSqlSafe(q));
        for kind in chunk {
            query = query
                .bind(id.as_str())
                .bind(kind.as_str())
                .bind(now.millis())
                .bind(now.millis());
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Queues deliveries, a multi-row INSERT per chunk; a key already queued is left as it is.
async fn insert_deliveries(
    tx: &mut Tx<'_>,
    deliveries: &[NewDelivery],
    now: Timestamp,
) -> Result<(), StoreError> {
    for chunk in deliveries.chunks(ROWS_PER_INSERT) {
        let mut q = String::from(
            "INSERT INTO outbox_deliveries (key, event_id, notice_id, order_id, kind, channel, detail, created_at, next_at) VALUES ",
        );
        q.push_str(&vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", "));
        q.push_str(" ON CONFLICT (key) DO NOTHING");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(q));
        for d in chunk {
            query = query
                .bind(&d.key)
                .bind(&d.event_id)
                .bind(d.notice_id)
                .bind(d.order_id.as_ref().map(OrderId::as_str))
                .bind(d.kind.as_str())
                .bind(&d.channel)
                .bind(&d.detail)
                .bind(now.millis())
                .bind(now.millis());
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_order(
        &self,
        order: &Order,
        access: &AccessToken,
        entries: &[TimelineEntry],
        notices: &[NoticeKind],
    ) -> Result<Intake, StoreError> {
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
        // Insert first and look only on a clash: a new order (the usual case) costs one
        // statement fewer than look-then-insert.
        let inserted = sqlx::query(
            "INSERT INTO orders (id, order_ref, fingerprint, package_id, ram_gb, customer_email, customer_name, os, state, run_at, \
             created_at, updated_at, storefront, access_token_hash, access_token_gen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (order_ref) DO NOTHING",
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
            let q = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE order_ref = ?");
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
        let q = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?");
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
            "SELECT {ORDER_COLUMNS} FROM orders WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR package_id = ?2) \
             AND (?3 IS NULL OR created_at >= ?3) AND (?4 IS NULL OR created_at < ?4) ORDER BY created_at DESC, id DESC LIMIT ?5 OFFSET ?6"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(f.state.map(OrderState::as_str))
            .bind(f.package.map(|p| i64::from(p.0)))
            .bind(f.created_from.map(Timestamp::millis))
            .bind(f.created_to.map(Timestamp::millis))
            .bind(f.page_size() as i64)
            .bind(f.offset.unwrap_or(0) as i64)
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
        let rows: Vec<(i64, String, String)> =
            sqlx::query_as("SELECT at, kind, message FROM timeline WHERE order_id = ? ORDER BY id")
                .bind(id.as_str())
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(super::timeline_entry).collect())
    }

    async fn purchases(&self, id: &OrderId) -> Result<Vec<Purchase>, StoreError> {
        let rows = sqlx::query("SELECT * FROM purchases WHERE order_id = ? ORDER BY id")
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(purchase_from).collect()
    }

    async fn credentials(&self, id: &OrderId) -> Result<Option<Vec<u8>>, StoreError> {
        let v: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT credentials FROM orders WHERE id = ?")
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
        let mut turn = self.write_turn().await?;
        let q = format!(
            "UPDATE orders SET lease_owner = ?1, lease_token = lease_token + 1, lease_expires_at = ?2 WHERE id IN (\
               SELECT id FROM orders WHERE state IN ('queued', 'buying', 'awaiting_credentials') AND run_at <= ?3 \
               AND (lease_expires_at IS NULL OR lease_expires_at <= ?3) ORDER BY run_at LIMIT ?4) \
             RETURNING {ORDER_COLUMNS}, lease_token"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(worker)
            .bind(expires.millis())
            .bind(now.millis())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *turn)
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
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(MAX(run_at, COALESCE(lease_expires_at, run_at))) FROM orders \
             WHERE state IN ('queued', 'buying', 'awaiting_credentials') AND run_at IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(v.map(Timestamp))
    }

    async fn save(&self, lease: &Lease, order: &Order, change: Change) -> Result<(), StoreError> {
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
        write_order(&mut tx, Some(lease), order, change, order.updated_at).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut turn = self.write_turn().await?;
        let done = sqlx::query("UPDATE orders SET lease_owner = NULL, lease_expires_at = NULL WHERE id = ? AND lease_token = ? AND lease_owner = ?")
            .bind(lease.order_id.as_str())
            .bind(lease.token)
            .bind(&lease.worker)
            .execute(&mut *turn)
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
        let mut turn = self.write_turn().await?;
        // The usual case in one statement: the fence is the INSERT's SELECT, so a row goes in
        // only for the lease holder and only if the package is free.
        let inserted = sqlx::query(
            "INSERT INTO flights (package_id, order_id) SELECT ?, id FROM orders WHERE id = ? AND lease_token = ? AND lease_owner = ? \
             ON CONFLICT (package_id) DO NOTHING",
        )
        .bind(i64::from(package.0))
        .bind(lease.order_id.as_str())
        .bind(lease.token)
        .bind(&lease.worker)
        .execute(&mut *turn)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(Flight::Granted);
        }
        // Nothing inserted: the lease is gone, or someone (maybe this order) holds the flight.
        // One statement, so one snapshot: still ours to hold, and who holds the flight.
        let row = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM orders WHERE id = ? AND lease_token = ? AND lease_owner = ?) AS leased, \
             (SELECT order_id FROM flights WHERE package_id = ?) AS holder",
        )
        .bind(lease.order_id.as_str())
        .bind(lease.token)
        .bind(&lease.worker)
        .bind(i64::from(package.0))
        .fetch_one(&mut *turn)
        .await?;
        drop(turn);
        let leased: bool = row.try_get("leased")?;
        let holder: Option<String> = row.try_get("holder")?;
        if !leased {
            return Err(StoreError::LeaseLost(lease.order_id.clone()));
        }
        // The INSERT found the package taken, and the holder left between the two statements
        // (only another process can do that): the step fails and is retried, as before.
        let Some(holder) = holder else {
            return Err(StoreError::Database(format!(
                "the flight for package {} was released while being taken",
                package.0
            )));
        };
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
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
        // The fenced order write first: if the lease is gone, no intent is written.
        let change = Change {
            entries: entries.to_vec(),
            keep_lease: true,
            ..Change::default()
        };
        write_order(&mut tx, Some(lease), order, change, intent.sent_at).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO purchases (order_id, attempt, package_id, package_name, stock_before, pool_before, sent_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
        let mut turn = self.write_turn().await?;
        let done = sqlx::query("UPDATE purchases SET outcome = ?, outcome_ip = ?, outcome_reason = ?, decided_at = ? WHERE id = ? AND outcome IS NULL")
            .bind(outcome.kind())
            .bind(&ip)
            .bind(&reason)
            .bind(at.millis())
            .bind(purchase_id)
            .execute(&mut *turn)
            .await?;
        if done.rows_affected() == 1 {
            return Ok(Recorded::Recorded);
        }
        if let Some(ip) = ip {
            sqlx::query("UPDATE purchases SET late_ip = ? WHERE id = ?")
                .bind(ip)
                .bind(purchase_id)
                .execute(&mut *turn)
                .await?;
        }
        Ok(Recorded::AlreadyDecided)
    }

    async fn owner_of(&self, ip: Ipv4Addr) -> Result<Option<OrderId>, StoreError> {
        let ip = ip.to_string();
        let v: Option<String> = sqlx::query_scalar(
            "SELECT id FROM orders WHERE server_ip = ?1 UNION ALL SELECT order_id FROM purchases WHERE outcome_ip = ?1 OR late_ip = ?1 LIMIT 1",
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
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
        let done = sqlx::query(
            "UPDATE orders SET lease_token = lease_token + 1, lease_owner = NULL, lease_expires_at = NULL \
             WHERE id = ? AND updated_at = ? AND (lease_expires_at IS NULL OR lease_expires_at <= ?)",
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
        let rows = sqlx::query("SELECT id, order_id, kind, attempts FROM outbox WHERE next_at IS NOT NULL AND next_at <= ? ORDER BY next_at, id LIMIT ?")
            .bind(now.millis())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
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
        let mut turn = self.write_turn().await?;
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, next_at = ?, last_error = ? WHERE id = ?",
        )
        .bind(retry_at.map(Timestamp::millis))
        .bind(error)
        .bind(id)
        .execute(&mut *turn)
        .await?;
        Ok(())
    }

    async fn fan_out(
        &self,
        deliveries: &[NewDelivery],
        notices: &[i64],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
        insert_deliveries(&mut tx, deliveries, now).await?;
        for chunk in notices.chunks(ROWS_PER_INSERT) {
            let q = format!(
                "UPDATE outbox SET attempts = attempts + 1, next_at = NULL, delivered_at = ? WHERE id IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(q)).bind(now.millis());
            for id in chunk {
                query = query.bind(id);
            }
            query.execute(&mut *tx).await?;
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
        // One UPDATE ... RETURNING: atomic in SQLite, so two dispatchers never claim the same row.
        let mut turn = self.write_turn().await?;
        let rows = sqlx::query(
            "UPDATE outbox_deliveries SET claimed_by = ?1, claim_token = claim_token + 1, claim_expires_at = ?2, \
               attempts = attempts + 1 WHERE id IN (\
               SELECT id FROM outbox_deliveries WHERE next_at IS NOT NULL AND next_at <= ?3 \
               AND (claim_expires_at IS NULL OR claim_expires_at <= ?3) ORDER BY next_at, id LIMIT ?4) \
             RETURNING id, key, event_id, order_id, kind, channel, detail, created_at, attempts, claim_token",
        )
        .bind(worker)
        .bind(now.plus(claim_for).millis())
        .bind(now.millis())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *turn)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| delivery_from(r, worker))
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
        let mut turn = self.write_turn().await?;
        let done = match result {
            DeliveryResult::Delivered { at } => {
                sqlx::query(
                    "UPDATE outbox_deliveries SET delivered_at = ?, next_at = NULL, last_error = NULL, claimed_by = NULL, \
                     claim_expires_at = NULL WHERE id = ? AND delivered_at IS NULL",
                )
                .bind(at.millis())
                .bind(d.id)
                .execute(&mut *turn)
                .await?
            }
            DeliveryResult::Failed { error, retry_at } => {
                sqlx::query(
                    "UPDATE outbox_deliveries SET next_at = ?, last_error = ?, claimed_by = NULL, claim_expires_at = NULL \
                     WHERE id = ? AND claim_token = ? AND claimed_by = ? AND delivered_at IS NULL",
                )
                .bind(retry_at.map(Timestamp::millis))
                .bind(error)
                .bind(d.id)
                .bind(d.token)
                .bind(&d.worker)
                .execute(&mut *turn)
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

    async fn replace_catalog(&self, packages: &[CatalogPackage]) -> Result<(), StoreError> {
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
        sqlx::query("DELETE FROM packages")
            .execute(&mut *tx)
            .await?;
        for p in packages {
            sqlx::query(
                "INSERT INTO packages (id, name, free, status, synced_at) VALUES (?, ?, ?, ?, ?)",
            )
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
        let q = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE order_ref = ?");
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
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
        let done = sqlx::query(
            "UPDATE orders SET access_token_hash = ?, access_token_gen = ? WHERE id = ?",
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
            sqlx::query_as("SELECT access_token_hash, access_token_gen FROM orders WHERE id = ?")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        access_token_from(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_in_memory_database_is_refused_by_name() {
        for url in ["sqlite::memory:", "sqlite://file:x?mode=memory"] {
            let Err(StoreError::Database(e)) = SqliteStore::connect(url).await else {
                panic!("{url} was accepted");
            };
            assert!(e.contains("in-memory") && e.contains(url), "{e}");
        }
    }

    #[tokio::test]
    async fn writes_and_reads_see_each_other_across_the_two_connections() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqliteStore::connect(&url).await.unwrap();
        let reopened = SqliteStore::connect(&url).await.unwrap();
        store
            .replace_catalog(&[CatalogPackage {
                id: PackageId(7),
                name: "10.7".into(),
                free: 3,
                active: true,
                synced_at: Timestamp(5),
            }])
            .await
            .unwrap();
        // Written on the writer, read on a reader of this store and of another one.
        for s in [&store, &reopened] {
            let cat = s.catalog().await.unwrap();
            assert_eq!(cat.len(), 1);
            assert_eq!(cat[0].free, 3);
        }
    }
}
