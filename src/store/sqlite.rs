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
use futures_util::future::BoxFuture;
use sqlx::query::Query;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{OwnedMutexGuard, mpsc, oneshot};

use super::sql::{self, Arg, SqlRow, Stmt};
use super::{
    AccessToken, Begun, Change, Claimed, Delivery, DeliveryResult, Flight, FlightState, Intake,
    Lease, NewDelivery, Notice, OrderFilter, Recorded, StateCounts, Store, StoreError,
};
use crate::clock::Timestamp;
use crate::domain::{
    CatalogPackage, Discovered, NoticeKind, Order, OrderId, OrderRef, PackageId, Purchase,
    PurchaseIntent, PurchaseOutcome, TimelineEntry,
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
    (
        6,
        "discovered",
        include_str!("../../migrations/sqlite/0006_discovered.sql"),
    ),
    (
        7,
        "purchases_package",
        include_str!("../../migrations/sqlite/0007_purchases_package.sql"),
    ),
];

/// Rows per multi-row statement: at most 9 parameters a row stays far below SQLite's limit
/// (32,766 parameters since 3.32).
const ROWS_PER_INSERT: usize = 100;

/// Default bound on the writes one group commit takes: enough to share a commit among every
/// worker of a busy process, small enough that a group's transaction stays short (a few ms).
pub const DEFAULT_GROUP_COMMIT: usize = 64;

/// The SQLite store.
///
/// Reads and writes use separate connections. Every write runs on one **writer** connection
/// that this store holds itself. SQLite admits one writer anyway; the single connection buys
/// three things (measured in `docs/benchmarks.md`):
/// - no busy-handler sleeps: a writer that finds the database locked would sleep in SQLite's busy
///   handler (1, 2, 5, 10 ... ms) although the holder is done within a millisecond, and
///   throughput would collapse as workers are added;
/// - a warm page cache: in WAL mode a connection discards its whole page cache whenever it sees
///   that *another* connection wrote. With writes spread over a pool, every write started cold and
///   re-read the B-tree pages it touched, a cost that grew with the database. The writer's own
///   commits leave its cache valid;
/// - no pool round trips: a sqlx pool pings a connection when it is taken and again when it is
///   given back, each a hop to the connection's thread, as costly as a statement.
///
/// **Group commit.** Writes are queued to a writer thread, which takes every write waiting
/// (up to `group_commit`) into one transaction, each write inside its own savepoint: a write
/// that fails is rolled back to its savepoint and answered with its error, without touching its
/// batch-mates. Every caller is answered only after the commit that holds its write, so a write
/// that returned is durable as before; the commit's fixed cost (the WAL append, the lock, the
/// `BEGIN`/`COMMIT` round trips) is shared by the group. A lone write takes no savepoint.
///
/// Other processes (`orders` CLI commands) still meet `busy_timeout`.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// Reads: several connections, each reading a consistent WAL snapshot.
    pool: SqlitePool,
    /// The one writer connection; the group-commit thread takes it for each group, and
    /// [`SqliteStore::write_turn`] for a write of its own (migrations, the benchmark's loop).
    writer: Arc<tokio::sync::Mutex<Writer>>,
    /// The queue of writes for the group-commit thread; it ends when the last clone is dropped.
    jobs: mpsc::UnboundedSender<Box<dyn Job>>,
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

/// A write's work: statements run on the writer connection inside the group's transaction.
type Work<T> = Box<
    dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, StoreError>> + Send,
>;

/// A write waiting in the group-commit queue, with its caller's answer.
trait Job: Send {
    /// Runs the write; whether it succeeded (else its savepoint is rolled back and it is
    /// answered at once with its own error).
    fn run<'c>(&'c mut self, conn: &'c mut SqliteConnection) -> BoxFuture<'c, bool>;
    /// Answers the caller: its own result once the group committed, or the group's failure.
    fn answer(self: Box<Self>, group: Result<(), &StoreError>);
}

impl std::fmt::Debug for dyn Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

/// A write of result `T`.
struct Pending<T> {
    work: Option<Work<T>>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send + 'static> Job for Pending<T> {
    fn run<'c>(&'c mut self, conn: &'c mut SqliteConnection) -> BoxFuture<'c, bool> {
        Box::pin(async move {
            let Some(work) = self.work.take() else {
                return false;
            };
            let result = work(conn).await;
            let ok = result.is_ok();
            self.result = Some(result);
            ok
        })
    }

    fn answer(self: Box<Self>, group: Result<(), &StoreError>) {
        let own = self.result.unwrap_or_else(|| {
            Err(StoreError::Database(
                "the write was not run: its group failed first".into(),
            ))
        });
        let answer = match (own, group) {
            (Err(e), _) => Err(e),
            (Ok(v), Ok(())) => Ok(v),
            (Ok(_), Err(e)) => Err(StoreError::Database(format!(
                "the group commit holding this write failed: {e}"
            ))),
        };
        // A caller that gave up waiting (its task was dropped) needs no answer.
        let _ = self.reply.send(answer);
    }
}

/// The group-commit loop: waits for a write, takes the writer connection, takes every write
/// queued meanwhile (up to `max`) and runs them as one transaction. Ends when the store is gone.
async fn group_commits(
    writer: Arc<tokio::sync::Mutex<Writer>>,
    mut jobs: mpsc::UnboundedReceiver<Box<dyn Job>>,
    max: usize,
) {
    while let Some(first) = jobs.recv().await {
        let mut turn = match lock_writer(&writer).await {
            Ok(turn) => turn,
            Err(e) => {
                first.answer(Err(&e));
                continue;
            }
        };
        let mut group = vec![first];
        while group.len() < max {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        run_group(&mut turn, group).await;
    }
}

/// Runs a control statement (BEGIN, SAVEPOINT, RELEASE, COMMIT): several in one round trip.
async fn control(conn: &mut SqliteConnection, sql: &'static str) -> Result<(), StoreError> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// One group: `BEGIN IMMEDIATE`, each write (in a savepoint when there are several), `COMMIT`,
/// then the answers. A failed control statement rolls the whole group back and fails every
/// write not yet answered: SQLite may have ended the transaction itself (a full disk, an I/O
/// error), and then nothing of it is kept.
async fn run_group(conn: &mut SqliteConnection, group: Vec<Box<dyn Job>>) {
    let savepoints = group.len() > 1;
    let mut kept: Vec<Box<dyn Job>> = Vec::with_capacity(group.len());
    let mut rest = group.into_iter();
    let begun = control(
        conn,
        if savepoints {
            "BEGIN IMMEDIATE; SAVEPOINT w"
        } else {
            "BEGIN IMMEDIATE"
        },
    )
    .await;
    let mut failed = begun.err();
    if failed.is_none() {
        while let Some(mut job) = rest.next() {
            let ok = job.run(conn).await;
            let last = rest.len() == 0;
            let next = match (savepoints, ok, last) {
                (false, true, _) => None,
                (false, false, _) => Some("ROLLBACK"),
                (true, true, false) => Some("RELEASE w; SAVEPOINT w"),
                (true, false, false) => Some("ROLLBACK TO w; RELEASE w; SAVEPOINT w"),
                (true, true, true) => Some("RELEASE w"),
                (true, false, true) => Some("ROLLBACK TO w; RELEASE w"),
            };
            if ok {
                kept.push(job);
            } else {
                // Its own error; nothing of it will be committed.
                job.answer(Ok(()));
            }
            if let Some(sql) = next
                && let Err(e) = control(conn, sql).await
            {
                failed = Some(e);
                break;
            }
        }
    }
    if failed.is_none() {
        if kept.is_empty() && !savepoints {
            // A lone write that failed, rolled back above.
            return;
        }
        failed = control(conn, "COMMIT").await.err();
    }
    match failed {
        None => {
            for job in kept {
                job.answer(Ok(()));
            }
        }
        Some(e) => {
            tracing::warn!("a SQLite group commit failed, its writes are not kept: {e}");
            let _ = control(conn, "ROLLBACK").await;
            for job in kept.into_iter().chain(rest) {
                job.answer(Err(&e));
            }
        }
    }
}

/// Takes the writer connection, opening it again if its thread died.
async fn lock_writer(writer: &Arc<tokio::sync::Mutex<Writer>>) -> Result<WriteTurn, StoreError> {
    let mut writer = Arc::clone(writer).lock_owned().await;
    if writer.checked_at.elapsed() >= WRITER_CHECK_EVERY {
        if let Err(e) = writer.conn.ping().await {
            tracing::warn!(error = %e, "the SQLite writer connection is gone; opening it again");
            writer.conn = SqliteConnection::connect_with(&writer.options).await?;
        }
        writer.checked_at = std::time::Instant::now();
    }
    Ok(WriteTurn(writer))
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `url` (`sqlite://path`) and applies
    /// migrations, with group commits of up to [`DEFAULT_GROUP_COMMIT`] writes.
    ///
    /// # Errors
    /// When the file cannot be opened or a migration fails, or for an in-memory URL: such a
    /// database would lose every order when the process exits.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, DEFAULT_GROUP_COMMIT).await
    }

    /// As [`SqliteStore::connect`], with group commits of up to `group_commit` writes; 1 gives
    /// every write a transaction of its own (the store before group commit, for comparison).
    ///
    /// # Errors
    /// As for [`SqliteStore::connect`], and when the writer thread cannot be started.
    pub async fn connect_with(url: &str, group_commit: usize) -> Result<Self, StoreError> {
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
        let writer = Arc::new(tokio::sync::Mutex::new(Writer {
            conn,
            options: writer_options,
            checked_at: std::time::Instant::now(),
        }));
        let (jobs, queue) = mpsc::unbounded_channel();
        // A thread of its own, with its own small runtime: the loop outlives no caller's task
        // and no caller's runtime, and a caller that stops waiting cannot cut a group short.
        let group_writer = Arc::clone(&writer);
        let max = group_commit.max(1);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(group_commits(group_writer, queue, max)),
                    Err(e) => tracing::error!("the SQLite writer thread has no runtime: {e}"),
                }
            })
            .map_err(|e| StoreError::Database(format!("cannot start the SQLite writer: {e}")))?;
        let store = Self { pool, writer, jobs };
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

    /// Waits for this process's turn to write, then hands over the writer connection, outside
    /// any group. Public for the benchmark that measures the raw commit rate through the same
    /// connection.
    ///
    /// # Errors
    /// When the writer connection's thread died and the file cannot be opened again.
    pub async fn write_turn(&self) -> Result<WriteTurn, StoreError> {
        lock_writer(&self.writer).await
    }

    /// Queues `work` for the next group commit and waits for the commit that holds it.
    async fn write<T: Send + 'static>(&self, work: Work<T>) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Pending {
            work: Some(work),
            result: None,
            reply,
        };
        self.jobs
            .send(Box::new(job))
            .map_err(|_| StoreError::Database("the SQLite writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Database("the SQLite writer stopped mid-write".into()))?
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
/// writes serialize on the one writer, so every statement saved is throughput (see
/// `docs/benchmarks.md`). Without a fence the caller checked it (admin changes).
async fn write_order(
    conn: &mut SqliteConnection,
    fence: Option<&Lease>,
    order: &Order,
    change: Change,
    now: Timestamp,
) -> Result<(), StoreError> {
    let done = query(&sql::update_order(fence, order, &change))
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::LeaseLost(order.id.clone()));
    }
    insert_entries(conn, &order.id, &change.entries).await?;
    for s in sql::after_order_write(order, &change) {
        query(&s).execute(&mut *conn).await?;
    }
    insert_notices(conn, &order.id, &change.notices, now).await
}

/// Records a purchase outcome first-writer-wins; whether it was the first.
async fn record_outcome(
    conn: &mut SqliteConnection,
    purchase_id: PurchaseId,
    outcome: &PurchaseOutcome,
    at: Timestamp,
) -> Result<Recorded, StoreError> {
    let (first, late) = sql::record_outcome(purchase_id, outcome, at);
    if query(&first).execute(&mut *conn).await?.rows_affected() == 1 {
        return Ok(Recorded::Recorded);
    }
    if let Some(late) = late {
        query(&late).execute(&mut *conn).await?;
    }
    Ok(Recorded::AlreadyDecided)
}

async fn insert_entries(
    conn: &mut SqliteConnection,
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
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

async fn insert_notices(
    conn: &mut SqliteConnection,
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
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Queues deliveries, a multi-row INSERT per chunk; a key already queued is left as it is.
async fn insert_deliveries(
    conn: &mut SqliteConnection,
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
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Queues deliveries and marks notices handed to them (see [`Store::fan_out`]).
async fn fan_out(
    conn: &mut SqliteConnection,
    deliveries: &[NewDelivery],
    notices: &[i64],
    now: Timestamp,
) -> Result<(), StoreError> {
    insert_deliveries(conn, deliveries, now).await?;
    for chunk in notices.chunks(ROWS_PER_INSERT) {
        let q = format!(
            "UPDATE outbox SET attempts = attempts + 1, next_at = NULL, delivered_at = ? WHERE id IN ({})",
            vec!["?"; chunk.len()].join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(q)).bind(now.millis());
        for id in chunk {
            query = query.bind(id);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Claims due deliveries (see [`Store::claim_deliveries`]), oldest due first.
async fn claim_deliveries(
    conn: &mut SqliteConnection,
    worker: &str,
    now: Timestamp,
    claim_for: Duration,
    limit: usize,
) -> Result<Vec<Delivery>, StoreError> {
    let stmt = sql::claim_deliveries(worker, now.plus(claim_for), now, limit, CLAIM_LOCK);
    let rows = query(&stmt).fetch_all(&mut *conn).await?;
    let mut out = rows
        .iter()
        .map(|r| sql::delivery(r, worker))
        .collect::<Result<Vec<_>, _>>()?;
    // RETURNING does not promise an order; keep the oldest due first.
    out.sort_by_key(|d| d.id);
    Ok(out)
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
        let (order, access) = (order.clone(), access.clone());
        let (entries, notices) = (entries.to_vec(), notices.to_vec());
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                // Insert first and look only on a clash: a new order (the usual case) costs one
                // statement fewer than look-then-insert.
                let inserted = query(&sql::insert_order(&order, &access))
                    .execute(&mut *conn)
                    .await?;
                if inserted.rows_affected() == 0 {
                    let row = query(&sql::order_by_ref(&order.order_ref))
                        .fetch_one(&mut *conn)
                        .await?;
                    let existing = sql::order(&row)?;
                    return Ok(if existing.fingerprint == order.fingerprint {
                        Intake::Existing(existing)
                    } else {
                        Intake::Conflict(existing)
                    });
                }
                insert_entries(conn, &order.id, &entries).await?;
                insert_notices(conn, &order.id, &notices, order.created_at).await?;
                Ok(Intake::Created(order))
            })
        }))
        .await
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
        let worker = worker.to_string();
        let stmt = sql::claim_due(&worker, expires, now, limit, CLAIM_LOCK);
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                let rows = query(&stmt).fetch_all(&mut *conn).await?;
                rows.iter()
                    .map(|row| sql::claimed(row, &worker, expires))
                    .collect()
            })
        }))
        .await
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let row = query(&sql::next_due()).fetch_one(&self.pool).await?;
        Ok(row.opt_int("next_due")?.map(Timestamp))
    }

    async fn save(&self, lease: &Lease, order: &Order, change: Change) -> Result<(), StoreError> {
        let (lease, order) = (lease.clone(), order.clone());
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                // The outcome first and unfenced: a fact about the world, committed even
                // when the lease is gone (the answer is then LeaseLost, inside Ok).
                let Some(o) = change.outcome.clone() else {
                    write_order(conn, Some(&lease), &order, change, order.updated_at).await?;
                    return Ok(Ok(()));
                };
                if record_outcome(conn, o.purchase_id, &o.outcome, o.at).await?
                    == Recorded::AlreadyDecided
                {
                    return Ok(Err(StoreError::LeaseLost(order.id.clone())));
                }
                match write_order(conn, Some(&lease), &order, change, order.updated_at).await {
                    Err(StoreError::LeaseLost(id)) => Ok(Err(StoreError::LeaseLost(id))),
                    other => other.map(Ok),
                }
            })
        }))
        .await?
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let lease = lease.clone();
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                let done = query(&sql::release(&lease)).execute(&mut *conn).await?;
                if done.rows_affected() == 0 {
                    Err(StoreError::LeaseLost(lease.order_id.clone()))
                } else {
                    Ok(())
                }
            })
        }))
        .await
    }

    async fn acquire_flight(
        &self,
        lease: &Lease,
        package: PackageId,
    ) -> Result<Flight, StoreError> {
        let lease = lease.clone();
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                // The usual case in one statement: the fence is the INSERT's SELECT, so a row
                // goes in only for the lease holder and only if the package is free.
                let inserted = sqlx::query(
                    "INSERT INTO flights (package_id, order_id) SELECT ?, id FROM orders WHERE id = ? AND lease_token = ? AND lease_owner = ? \
                     ON CONFLICT (package_id) DO NOTHING",
                )
                .bind(i64::from(package.0))
                .bind(lease.order_id.as_str())
                .bind(lease.token)
                .bind(&lease.worker)
                .execute(&mut *conn)
                .await?;
                if inserted.rows_affected() == 1 {
                    return Ok(Flight::Granted);
                }
                // Nothing inserted: the lease is gone, or someone (maybe this order) holds the
                // flight. Inside the group's transaction, so one snapshot.
                let row = query(&sql::flight_after_refusal(&lease, package))
                    .fetch_one(&mut *conn)
                    .await?;
                match sql::refused_flight(&row, &lease)? {
                    None => Ok(Flight::Granted),
                    Some(Begun::HeldBy(holder)) => Ok(Flight::HeldBy(holder)),
                    // Nobody holds it and nothing was inserted: the one writer makes that
                    // impossible, short of another process writing between the two statements.
                    Some(_) => Err(StoreError::Database(format!(
                        "the flight for package {} was released while being taken",
                        package.0
                    ))),
                }
            })
        }))
        .await
    }

    async fn begin_purchase(
        &self,
        lease: &Lease,
        order: &Order,
        intent: &PurchaseIntent,
        entries: &[TimelineEntry],
    ) -> Result<PurchaseId, StoreError> {
        let (lease, order, intent) = (lease.clone(), order.clone(), intent.clone());
        let entries = entries.to_vec();
        self.write(Box::new(move |conn| {
            Box::pin(async move { begin_purchase(conn, &lease, &order, &intent, entries).await })
        }))
        .await
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
        let (lease, order, intent) = (lease.clone(), order.clone(), intent.clone());
        let entries = entries.to_vec();
        let take = sql::take_flight(&lease, intent.package_id, seen);
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                // The flight first, fenced in the INSERT's SELECT: when it is refused, nothing
                // has been written.
                if query(&take).execute(&mut *conn).await?.rows_affected() == 0 {
                    let row = query(&sql::flight_after_refusal(&lease, intent.package_id))
                        .fetch_one(&mut *conn)
                        .await?;
                    if let Some(refused) = sql::refused_flight(&row, &lease)? {
                        return Ok(refused);
                    }
                }
                let id = begin_purchase(conn, &lease, &order, &intent, entries).await?;
                Ok(Begun::Purchase(id))
            })
        }))
        .await
    }

    async fn record_outcome(
        &self,
        purchase_id: PurchaseId,
        outcome: &PurchaseOutcome,
        at: Timestamp,
    ) -> Result<Recorded, StoreError> {
        let outcome = outcome.clone();
        self.write(Box::new(move |conn| {
            Box::pin(async move { record_outcome(conn, purchase_id, &outcome, at).await })
        }))
        .await
    }

    async fn expedite(&self, id: &OrderId, at: Timestamp) -> Result<bool, StoreError> {
        let stmt = sql::expedite(id, at);
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                let done = query(&stmt).execute(&mut *conn).await?;
                Ok(done.rows_affected() == 1)
            })
        }))
        .await
    }

    async fn record_discovered(&self, found: &[Discovered]) -> Result<(), StoreError> {
        if found.is_empty() {
            return Ok(());
        }
        let stmts: Vec<Stmt> = found.iter().map(sql::record_discovered).collect();
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                for s in &stmts {
                    query(s).execute(&mut *conn).await?;
                }
                Ok(())
            })
        }))
        .await
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

    async fn admin_save(
        &self,
        order: &Order,
        expected_updated_at: Timestamp,
        now: Timestamp,
        change: Change,
    ) -> Result<(), StoreError> {
        let order = order.clone();
        let fence = sql::admin_fence(&order, expected_updated_at, now);
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                let done = query(&fence).execute(&mut *conn).await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::Conflict(order.id.clone()));
                }
                let change = Change {
                    keep_lease: false,
                    ..change
                };
                write_order(conn, None, &order, change, now).await
            })
        }))
        .await
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
        let (deliveries, notices) = (deliveries.to_vec(), notices.to_vec());
        self.write(Box::new(move |conn| {
            Box::pin(async move { fan_out(conn, &deliveries, &notices, now).await })
        }))
        .await
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
        let (deliveries, notices) = (deliveries.to_vec(), notices.to_vec());
        let worker = worker.to_string();
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                fan_out(conn, &deliveries, &notices, now).await?;
                claim_deliveries(conn, &worker, now, claim_for, limit).await
            })
        }))
        .await
    }

    async fn claim_deliveries(
        &self,
        worker: &str,
        now: Timestamp,
        claim_for: Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let worker = worker.to_string();
        self.write(Box::new(move |conn| {
            Box::pin(async move { claim_deliveries(conn, &worker, now, claim_for, limit).await })
        }))
        .await
    }

    async fn finish_delivery(
        &self,
        d: &Delivery,
        result: &DeliveryResult,
    ) -> Result<bool, StoreError> {
        let stmt = sql::finish_delivery(d, result);
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                let done = query(&stmt).execute(&mut *conn).await?;
                Ok(done.rows_affected() == 1)
            })
        }))
        .await
    }

    async fn finish_deliveries(
        &self,
        results: &[(Delivery, DeliveryResult)],
    ) -> Result<Vec<bool>, StoreError> {
        let plan = FinishPlan::new(results);
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                let mut changed = std::collections::HashSet::new();
                for s in &plan.delivered {
                    for row in query(s).fetch_all(&mut *conn).await? {
                        changed.insert(row.int("id")?);
                    }
                }
                for (id, s) in &plan.failed {
                    if query(s).execute(&mut *conn).await?.rows_affected() == 1 {
                        changed.insert(*id);
                    }
                }
                Ok(plan.ids.iter().map(|id| changed.contains(id)).collect())
            })
        }))
        .await
    }

    async fn outbox_backlog(&self) -> Result<u64, StoreError> {
        let row = query(&sql::outbox_backlog()).fetch_one(&self.pool).await?;
        Ok(u64::try_from(row.int("backlog")?).unwrap_or(0))
    }

    async fn replace_catalog(&self, packages: &[CatalogPackage]) -> Result<(), StoreError> {
        let stmts: Vec<Stmt> = packages.iter().map(sql::insert_package).collect();
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                query(&sql::delete_catalog()).execute(&mut *conn).await?;
                for s in &stmts {
                    query(s).execute(&mut *conn).await?;
                }
                Ok(())
            })
        }))
        .await
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
        let (id, entry) = (id.clone(), entry.clone());
        let stmt = sql::rotate_access_token(&id, next);
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                let done = query(&stmt).execute(&mut *conn).await?;
                if done.rows_affected() == 0 {
                    return Err(sql::no_order_for_token(&id));
                }
                insert_entries(conn, &id, std::slice::from_ref(&entry)).await
            })
        }))
        .await
    }

    async fn access_token(&self, id: &OrderId) -> Result<Option<AccessToken>, StoreError> {
        let row = query(&sql::access_token_query(id))
            .fetch_optional(&self.pool)
            .await?;
        sql::access_token(row.as_ref())
    }
}

/// Writes a purchase intent with the fenced order write, before buyvps is sent; its id.
async fn begin_purchase(
    conn: &mut SqliteConnection,
    lease: &Lease,
    order: &Order,
    intent: &PurchaseIntent,
    entries: Vec<TimelineEntry>,
) -> Result<PurchaseId, StoreError> {
    // The fenced order write first: if the lease is gone, no intent is written.
    let change = Change {
        entries,
        keep_lease: true,
        ..Change::default()
    };
    write_order(conn, Some(lease), order, change, intent.sent_at).await?;
    let row = query(&sql::insert_purchase(intent))
        .fetch_one(&mut *conn)
        .await?;
    row.int("id").map(PurchaseId)
}

/// A batch of finished deliveries as statements: the delivered ones in one statement per
/// [`ROWS_PER_INSERT`], each failure in one of its own (failures are rare and each is fenced by
/// its claim).
struct FinishPlan {
    /// The deliveries, in the caller's order.
    ids: Vec<i64>,
    /// Statements returning the `id` of each delivery they marked delivered.
    delivered: Vec<Stmt>,
    /// One fenced statement per failure.
    failed: Vec<(i64, Stmt)>,
}

impl FinishPlan {
    fn new(results: &[(Delivery, DeliveryResult)]) -> Self {
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for (d, r) in results {
            match r {
                DeliveryResult::Delivered { at } => done.push((d.id, *at)),
                DeliveryResult::Failed { .. } => failed.push((d.id, sql::finish_delivery(d, r))),
            }
        }
        Self {
            ids: results.iter().map(|(d, _)| d.id).collect(),
            delivered: done
                .chunks(ROWS_PER_INSERT)
                .map(sql::finish_delivered)
                .collect(),
            failed,
        }
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
