//! The SQLite store: the embedded default. WAL mode, one file, migrations embedded in the binary.
//!
//! Claims are a single `UPDATE ... RETURNING` (atomic in SQLite); multi-statement writes run in
//! `BEGIN IMMEDIATE` transactions so two writers never deadlock upgrading a read lock. Every
//! timestamp is bound from the `Clock`; SQL's own notion of now is never used.

use crate::domain::PurchaseId;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::query::Query;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Row, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::OwnedMutexGuard;

use super::sql::{self, Arg, SqlRow, Stmt};
use super::{
    AccessToken, ActionRequest, Change, Claimed, Delivery, DeliveryResult, Expiring, Flight,
    Intake, Lease, NewDelivery, Notice, OrderFilter, Recorded, RenewalRequest, StateCounts, Store,
    StoreError,
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
    (
        6,
        "discovered",
        include_str!("../../migrations/sqlite/0006_discovered.sql"),
    ),
    (
        7,
        "server_actions",
        include_str!("../../migrations/sqlite/0007_server_actions.sql"),
    ),
    (
        8,
        "renewals",
        include_str!("../../migrations/sqlite/0008_renewals.sql"),
    ),
];

/// Rows per multi-row statement: at most 9 parameters a row stays far below SQLite's limit
/// (32,766 parameters since 3.32).
const ROWS_PER_INSERT: usize = 100;

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

/// Binds a shared statement for SQLite (`$n` binds the n-th value here too).
fn query(s: &Stmt) -> Query<'_, Sqlite, SqliteArguments> {
    s.args.iter().fold(
        sqlx::query(sqlx::AssertSqlSafe(s.sql.as_str())),
        |q, a| match a {
            Arg::Int(v) => q.bind(*v),
            Arg::Text(v) => q.bind(v.as_deref()),
            Arg::Bytes(v) => q.bind(v.as_deref()),
        },
    )
}

/// The row locking of a claim's inner select: none, SQLite's one writer already serializes
/// claims and `UPDATE ... RETURNING` is atomic.
const CLAIM_LOCK: &str = "";

type Tx<'c> = sqlx::Transaction<'c, sqlx::Sqlite>;

/// Writes the order's mutable columns and everything in `change`, with the fence checked by the
/// order update itself when `fence` is given: one statement instead of a check and an update, and
/// writes serialize on this process's turn, so every statement saved is throughput (see
/// `docs/benchmarks.md`). Without a fence the caller checked it (admin changes).
async fn write_order(
    tx: &mut Tx<'_>,
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
        let mut turn = self.write_turn().await?;
        let rows = query(&sql::claim_due(worker, expires, now, limit, CLAIM_LOCK))
            .fetch_all(&mut *turn)
            .await?;
        rows.iter()
            .map(|row| sql::claimed(row, worker, expires))
            .collect()
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let row = query(&sql::next_due()).fetch_one(&self.pool).await?;
        Ok(row.opt_int("next_due")?.map(Timestamp))
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
        let done = query(&sql::release(lease)).execute(&mut *turn).await?;
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
            Ok(Flight::HeldBy(sql::order_id(&holder, "flights.order_id")?))
        }
    }

    async fn begin_purchase(
        &self,
        lease: &Lease,
        order: &Order,
        intent: &PurchaseIntent,
        entries: &[TimelineEntry],
    ) -> Result<PurchaseId, StoreError> {
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
        // The fenced order write first: if the lease is gone, no intent is written.
        let change = Change {
            entries: entries.to_vec(),
            keep_lease: true,
            ..Change::default()
        };
        write_order(&mut tx, Some(lease), order, change, intent.sent_at).await?;
        let row = query(&sql::insert_purchase(intent))
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        row.int("id").map(PurchaseId)
    }

    async fn record_outcome(
        &self,
        purchase_id: PurchaseId,
        outcome: &PurchaseOutcome,
        at: Timestamp,
    ) -> Result<Recorded, StoreError> {
        let (first, late) = sql::record_outcome(purchase_id, outcome, at);
        let mut turn = self.write_turn().await?;
        if query(&first).execute(&mut *turn).await?.rows_affected() == 1 {
            return Ok(Recorded::Recorded);
        }
        if let Some(late) = late {
            query(&late).execute(&mut *turn).await?;
        }
        Ok(Recorded::AlreadyDecided)
    }

    async fn expedite(&self, id: &OrderId, at: Timestamp) -> Result<bool, StoreError> {
        let mut turn = self.write_turn().await?;
        let done = query(&sql::expedite(id, at)).execute(&mut *turn).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn record_discovered(&self, found: &[Discovered]) -> Result<(), StoreError> {
        if found.is_empty() {
            return Ok(());
        }
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
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

    async fn candidates(&self, order: &OrderId) -> Result<Vec<Discovered>, StoreError> {
        let rows = query(&sql::candidates_for(order))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(sql::discovered).collect()
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
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
        let state = query(&sql::order_state(id, ""))
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
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
        let state = query(&sql::order_state(id, ""))
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
        let mut turn = self.write_turn().await?;
        let done = query(&sql::wake_expiring(until, now, limit))
            .execute(&mut *turn)
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
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
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
        write_order(&mut tx, None, order, change, now).await?;
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
        let stmt = sql::claim_deliveries(worker, now.plus(claim_for), now, limit, CLAIM_LOCK);
        let mut turn = self.write_turn().await?;
        let rows = query(&stmt).fetch_all(&mut *turn).await?;
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
        let mut turn = self.write_turn().await?;
        let done = query(&sql::finish_delivery(d, result))
            .execute(&mut *turn)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn outbox_backlog(&self) -> Result<u64, StoreError> {
        let row = query(&sql::outbox_backlog()).fetch_one(&self.pool).await?;
        Ok(u64::try_from(row.int("backlog")?).unwrap_or(0))
    }

    async fn replace_catalog(&self, packages: &[CatalogPackage]) -> Result<(), StoreError> {
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
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
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
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
