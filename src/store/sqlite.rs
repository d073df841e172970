//! The SQLite store: the embedded default. WAL mode, one file, migrations embedded in the binary.
//!
//! Claims are a single `UPDATE ... RETURNING` (atomic in SQLite); multi-statement writes run in
//! `BEGIN IMMEDIATE` transactions so two writers never deadlock upgrading a read lock. Every
//! timestamp is bound from the `Clock`; SQL's own notion of now is never used.

use crate::domain::CompleteScan;
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
        "purchases_package",
        include_str!("../../migrations/sqlite/0008_purchases_package.sql"),
    ),
    (
        9,
        "renewals",
        include_str!("../../migrations/sqlite/0009_renewals.sql"),
    ),
    (
        10,
        "purchases_stock_after",
        include_str!("../../migrations/sqlite/0010_purchases_stock_after.sql"),
    ),
    (
        11,
        "complete_scans",
        include_str!("../../migrations/sqlite/0011_complete_scans.sql"),
    ),
    (
        12,
        "purchases_unknown",
        include_str!("../../migrations/sqlite/0012_purchases_unknown.sql"),
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
/// **Group commit.** Writes are queued to one group-commit task, which takes every write
/// waiting (up to `group_commit`) into one transaction. Every caller is answered only after
/// the commit that holds its write, so a write that returned is durable as before; the
/// commit's fixed cost (the lock, the WAL append, the `BEGIN`/`COMMIT` round trips) is shared
/// by the group. A write that fails is answered with its own error and never fails its
/// batch-mates: one that failed deciding (a fence that matched nothing) has written nothing and
/// the group goes on; any other failure rolls the group back and the others run again.
/// Within a write, the statements after its deciding one go to the connection as one text,
/// one round trip to the connection's thread instead of one per statement: those round trips
/// (thread wake-ups) were most of the CPU a write cost.
///
/// Other processes (`orders` CLI commands) still meet `busy_timeout`.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// Reads: several connections, each reading a consistent WAL snapshot.
    pool: SqlitePool,
    /// The one writer connection; the group-commit task takes it for each group, and
    /// [`SqliteStore::write_turn`] for a write of its own (migrations, the benchmark's loop).
    writer: Arc<tokio::sync::Mutex<Writer>>,
    /// The queue of writes for the group-commit task; it ends when the last clone is dropped.
    jobs: mpsc::UnboundedSender<Box<dyn Job>>,
    /// Stops the background checkpointer when the last clone is dropped (`None`: the writer
    /// checkpoints itself, as SQLite does by default).
    _checkpointer: Option<Arc<tokio_util::sync::DropGuard>>,
}

/// How often the background checkpointer copies the WAL back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

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
/// `Fn`, not `FnOnce`: when a batch-mate fails, the group is rolled back and the others run
/// again, so the work must be able to run twice.
type Work<T> = Box<
    dyn for<'c> Fn(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, StoreError>> + Send + Sync,
>;

/// A write waiting in the group-commit queue, with its caller's answer.
trait Job: Send {
    /// Runs the write (again, if its group was rolled back); whether it succeeded.
    fn run<'c>(&'c mut self, conn: &'c mut SqliteConnection) -> BoxFuture<'c, bool>;
    /// Whether its failure left nothing written: see [`wrote_nothing`].
    fn failed_cleanly(&self) -> bool;
    /// Answers the caller: its own result once the group committed, or the group's failure.
    fn answer(self: Box<Self>, group: Result<(), &StoreError>);
}

/// A write of result `T`.
struct Pending<T> {
    work: Work<T>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send + 'static> Job for Pending<T> {
    fn run<'c>(&'c mut self, conn: &'c mut SqliteConnection) -> BoxFuture<'c, bool> {
        Box::pin(async move {
            let result = (self.work)(conn).await;
            let ok = result.is_ok();
            self.result = Some(result);
            ok
        })
    }

    fn failed_cleanly(&self) -> bool {
        matches!(&self.result, Some(Err(e)) if wrote_nothing(e))
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

/// The errors a write returns only from its deciding statement, before it has written
/// anything (a fence or a lease that matched no row): the group goes on without rolling back.
/// Every write below keeps to that; any other error rolls the group back.
fn wrote_nothing(e: &StoreError) -> bool {
    matches!(e, StoreError::LeaseLost(_) | StoreError::Conflict(_))
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

/// Runs a control statement (BEGIN, COMMIT, ROLLBACK).
async fn control(conn: &mut SqliteConnection, sql: &'static str) -> Result<(), StoreError> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// One group: `BEGIN IMMEDIATE`, each write, `COMMIT`, then the answers. A write that fails
/// having written nothing ([`wrote_nothing`]) is answered and the group goes on. One that may
/// have written part of itself rolls the group back: it is answered with its error and the
/// others run again in a new transaction, so no write fails for a batch-mate's fault and no
/// savepoint round trip is paid per write.
async fn run_group(conn: &mut SqliteConnection, mut group: Vec<Box<dyn Job>>) {
    while !group.is_empty() {
        if let Err(e) = control(conn, "BEGIN IMMEDIATE").await {
            for job in group {
                job.answer(Err(&e));
            }
            return;
        }
        let mut broken = None;
        let mut i = 0;
        while i < group.len() {
            if group[i].run(conn).await {
                i += 1;
            } else if group[i].failed_cleanly() {
                group.remove(i).answer(Ok(()));
            } else {
                broken = Some(i);
                break;
            }
        }
        let Some(i) = broken else {
            let committed = if group.is_empty() {
                control(conn, "ROLLBACK").await
            } else {
                control(conn, "COMMIT").await
            };
            if let Err(e) = &committed {
                tracing::warn!("a SQLite group commit failed, its writes are not kept: {e}");
                let _ = control(conn, "ROLLBACK").await;
            }
            for job in group {
                job.answer(committed.as_ref().map(|_| ()));
            }
            return;
        };
        if let Err(e) = control(conn, "ROLLBACK").await {
            // The transaction may be gone already (SQLite ends it itself on some errors);
            // if the connection cannot even say so, nothing of the group is kept.
            tracing::warn!("rolling back a SQLite group failed: {e}");
        }
        group.remove(i).answer(Ok(()));
    }
}

/// Checkpoints the WAL every [`CHECKPOINT_EVERY`] from a reader connection until `stop`
/// (PASSIVE: it copies what no reader still needs and never waits for, or blocks, the writer).
async fn checkpoints(pool: SqlitePool, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(CHECKPOINT_EVERY) => {}
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            tracing::debug!("WAL checkpoint failed (tried again shortly): {e}");
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
        let runtime = tokio::runtime::Handle::try_current().ok();
        let mut writer_options = options
            .clone()
            .pragma("cache_size", format!("-{WRITER_CACHE_KIB}"));
        if runtime.is_some() {
            // The checkpoint moves off the write path: SQLite's automatic one runs inside the
            // COMMIT that crosses 1,000 WAL pages, and the database file's fsync with it, while
            // every queued write waits (the slowest steps in `bench throughput`). A task on a
            // reader connection does it instead, PASSIVE (it never blocks the writer).
            writer_options = writer_options.pragma("wal_autocheckpoint", "0");
        }
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
        let group_writer = Arc::clone(&writer);
        let max = group_commit.max(1);
        // A task on this runtime (a wake-up between tasks, not threads, for every write), or a
        // thread with a small runtime of its own when there is no runtime to run on. The loop
        // ends when the last clone of the store is dropped.
        let checkpointer = runtime.as_ref().map(|rt| {
            let stop = tokio_util::sync::CancellationToken::new();
            rt.spawn(checkpoints(pool.clone(), stop.clone()));
            Arc::new(stop.drop_guard())
        });
        match runtime {
            Some(rt) => {
                rt.spawn(group_commits(group_writer, queue, max));
            }
            None => {
                std::thread::Builder::new()
                    .name("sqlite-writer".into())
                    .spawn(move || {
                        match tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        {
                            Ok(rt) => rt.block_on(group_commits(group_writer, queue, max)),
                            Err(e) => {
                                tracing::error!("the SQLite writer thread has no runtime: {e}")
                            }
                        }
                    })
                    .map_err(|e| {
                        StoreError::Database(format!("cannot start the SQLite writer: {e}"))
                    })?;
            }
        }
        let store = Self {
            pool,
            writer,
            jobs,
            _checkpointer: checkpointer,
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

    /// Waits for this process's turn to write, then hands over the writer connection, outside
    /// any group. Public for the benchmark that measures the raw commit rate through the same
    /// connection.
    ///
    /// # Errors
    /// When the writer connection's thread died and the file cannot be opened again.
    pub async fn write_turn(&self) -> Result<WriteTurn, StoreError> {
        lock_writer(&self.writer).await
    }

    /// Queues one statement (or one text of several) for the next group commit; the rows it
    /// changed.
    async fn execute(&self, stmt: Stmt) -> Result<u64, StoreError> {
        let stmt = Arc::new(stmt);
        self.write(Box::new(move |conn| {
            let stmt = Arc::clone(&stmt);
            Box::pin(async move { Ok(query(&stmt).execute(&mut *conn).await?.rows_affected()) })
        }))
        .await
    }

    /// Queues `work` for the next group commit and waits for the commit that holds it.
    async fn write<T: Send + 'static>(&self, work: Work<T>) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Pending {
            work,
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
/// order update itself when `fence` is given: one statement instead of a check and an update.
/// Everything after it goes to the connection as one text of statements: writes serialize on
/// the one writer, and each call to its thread is a round trip between threads, so every call
/// saved is throughput (see `docs/benchmarks.md`). Without a fence the caller checked it (admin
/// changes). [`StoreError::LeaseLost`] is returned before anything is written.
async fn write_order(
    conn: &mut SqliteConnection,
    fence: Option<&Lease>,
    order: &Order,
    change: &Change,
    now: Timestamp,
) -> Result<(), StoreError> {
    let done = query(&sql::update_order(fence, order, change))
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::LeaseLost(order.id.clone()));
    }
    if let Some(rest) = Stmt::chain(after_update(order, change, now)) {
        query(&rest).execute(&mut *conn).await?;
    }
    Ok(())
}

/// A worker's save (see [`Store::save`]) on the writer connection. `Ok(Err(LeaseLost))`: the
/// fence failed after the purchase outcome was recorded, which is kept (the write's group
/// commits it); a plain `Err(LeaseLost)` wrote nothing at all.
async fn save_order(
    conn: &mut SqliteConnection,
    lease: &Lease,
    order: &Order,
    change: &Change,
) -> Result<Result<(), StoreError>, StoreError> {
    // The outcome first and unfenced: a fact about the world, committed even when the lease is
    // gone (the answer is then LeaseLost, inside Ok).
    let Some(o) = &change.outcome else {
        write_order(conn, Some(lease), order, change, order.updated_at).await?;
        return Ok(Ok(()));
    };
    if record_outcome(conn, o.purchase_id, &o.outcome, o.at).await? == Recorded::AlreadyDecided {
        return Ok(Err(StoreError::LeaseLost(order.id.clone())));
    }
    match write_order(conn, Some(lease), order, change, order.updated_at).await {
        Err(StoreError::LeaseLost(id)) => Ok(Err(StoreError::LeaseLost(id))),
        other => other.map(Ok),
    }
}

/// What an order write does after its order row: timeline lines, the flight, a resolution,
/// notices.
fn after_update(order: &Order, change: &Change, now: Timestamp) -> Vec<Stmt> {
    let mut out = entries_stmts(&order.id, &change.entries);
    out.extend(sql::after_order_write(order, change));
    out.extend(notices_stmts(&order.id, &change.notices, now));
    out
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

/// Timeline lines as multi-row INSERTs (one per [`ROWS_PER_INSERT`] lines; none for none).
fn entries_stmts(id: &OrderId, entries: &[TimelineEntry]) -> Vec<Stmt> {
    entries
        .chunks(ROWS_PER_INSERT)
        .map(|chunk| {
            let mut s = Stmt::new(String::new());
            let rows: Vec<String> = chunk
                .iter()
                .map(|e| {
                    format!(
                        "({}, {}, {}, {})",
                        s.param(Arg::Text(Some(id.as_str().into()))),
                        s.param(Arg::Int(Some(e.at.millis()))),
                        s.param(Arg::Text(Some(e.kind.as_str().into()))),
                        s.param(Arg::Text(Some(e.message.clone()))),
                    )
                })
                .collect();
            s.sql = format!(
                "INSERT INTO timeline (order_id, at, kind, message) VALUES {}",
                rows.join(", ")
            );
            s
        })
        .collect()
}

/// Outbox notices as multi-row INSERTs (none for none).
fn notices_stmts(id: &OrderId, notices: &[NoticeKind], now: Timestamp) -> Vec<Stmt> {
    notices
        .chunks(ROWS_PER_INSERT)
        .map(|chunk| {
            let mut s = Stmt::new(String::new());
            let rows: Vec<String> = chunk
                .iter()
                .map(|kind| {
                    format!(
                        "({}, {}, {}, {})",
                        s.param(Arg::Text(Some(id.as_str().into()))),
                        s.param(Arg::Text(Some(kind.as_str().into()))),
                        s.param(Arg::Int(Some(now.millis()))),
                        s.param(Arg::Int(Some(now.millis()))),
                    )
                })
                .collect();
            s.sql = format!(
                "INSERT INTO outbox (order_id, kind, created_at, next_at) VALUES {}",
                rows.join(", ")
            );
            s
        })
        .collect()
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
        let insert = sql::insert_order(order, access);
        let by_ref = sql::order_by_ref(&order.order_ref);
        let rest = Stmt::chain(
            entries_stmts(&order.id, entries)
                .into_iter()
                .chain(notices_stmts(&order.id, notices, order.created_at)),
        );
        let order = Arc::new(order.clone());
        self.write(Box::new(move |conn| {
            let (insert, by_ref, rest, order) = (
                insert.clone(),
                by_ref.clone(),
                rest.clone(),
                Arc::clone(&order),
            );
            Box::pin(async move {
                // Insert first and look only on a clash: a new order (the usual case) costs one
                // statement fewer than look-then-insert.
                let inserted = query(&insert).execute(&mut *conn).await?;
                if inserted.rows_affected() == 0 {
                    let row = query(&by_ref).fetch_one(&mut *conn).await?;
                    let existing = sql::order(&row)?;
                    return Ok(if existing.fingerprint == order.fingerprint {
                        Intake::Existing(existing)
                    } else {
                        Intake::Conflict(existing)
                    });
                }
                if let Some(rest) = &rest {
                    query(rest).execute(&mut *conn).await?;
                }
                Ok(Intake::Created((*order).clone()))
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
        let worker: Arc<str> = worker.into();
        let stmt = Arc::new(sql::claim_due(&worker, expires, now, limit, CLAIM_LOCK));
        self.write(Box::new(move |conn| {
            let (stmt, worker) = (Arc::clone(&stmt), Arc::clone(&worker));
            Box::pin(async move {
                let rows = query(&stmt).fetch_all(&mut *conn).await?;
                sql::claimed_all(&rows, &worker, expires)
            })
        }))
        .await
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let row = query(&sql::next_due()).fetch_one(&self.pool).await?;
        Ok(row.opt_int("next_due")?.map(Timestamp))
    }

    async fn save(&self, lease: &Lease, order: &Order, change: Change) -> Result<(), StoreError> {
        let data = Arc::new((lease.clone(), order.clone(), change));
        self.write(Box::new(move |conn| {
            let data = Arc::clone(&data);
            Box::pin(async move {
                let (lease, order, change) = &*data;
                save_order(conn, lease, order, change).await
            })
        }))
        .await?
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
        let expires = now.plus(lease_for);
        let claim = sql::claim_due(&lease.worker, expires, now, limit, CLAIM_LOCK);
        let data = Arc::new((lease.clone(), order.clone(), change, claim));
        self.write(Box::new(move |conn| {
            let data = Arc::clone(&data);
            Box::pin(async move {
                let (lease, order, change, claim) = &*data;
                if let Err(lost) = save_order(conn, lease, order, change).await? {
                    return Ok(Err(lost));
                }
                // In the save's transaction, after it: the claim sees the order as just saved.
                let rows = query(claim).fetch_all(&mut *conn).await?;
                Ok(Ok(sql::claimed_all(&rows, &lease.worker, expires)?))
            })
        }))
        .await?
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let lease = Arc::new(lease.clone());
        self.write(Box::new(move |conn| {
            let lease = Arc::clone(&lease);
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
        let take = sql::take_flight(lease, intent.package_id, seen);
        let refusal = sql::flight_after_refusal(lease, intent.package_id);
        let data = Arc::new((Intent::new(lease, order, intent, entries), take, refusal));
        self.write(Box::new(move |conn| {
            let data = Arc::clone(&data);
            Box::pin(async move {
                let (intent, take, refusal) = &*data;
                // The flight first, fenced in the INSERT's SELECT: when it is refused, nothing
                // has been written.
                let taken = query(take).execute(&mut *conn).await?.rows_affected() == 1;
                if !taken {
                    let row = query(refusal).fetch_one(&mut *conn).await?;
                    if let Some(refused) = sql::refused_flight(&row, &intent.lease)? {
                        return Ok(refused);
                    }
                }
                match intent.write(conn).await {
                    // The flight's fence passed in this transaction, so the order's cannot fail;
                    // if it did, the flight just taken must be rolled back with the group.
                    Err(StoreError::LeaseLost(id)) if taken => Err(StoreError::Database(format!(
                        "order {id} lost its lease between taking its flight and its intent"
                    ))),
                    other => other.map(Begun::Purchase),
                }
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
        let outcome = Arc::new(outcome.clone());
        self.write(Box::new(move |conn| {
            let outcome = Arc::clone(&outcome);
            Box::pin(async move { record_outcome(conn, purchase_id, &outcome, at).await })
        }))
        .await
    }

    async fn expedite(&self, id: &OrderId, at: Timestamp) -> Result<bool, StoreError> {
        self.execute(sql::expedite(id, at)).await.map(|n| n == 1)
    }

    async fn record_discovered(&self, found: &[Discovered]) -> Result<(), StoreError> {
        if let Some(all) = Stmt::chain(found.iter().map(sql::record_discovered)) {
            self.execute(all).await?;
        }
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
        let prune = sql::prune_complete_scans(scan.package_id, scan.retained_from());
        self.execute(sql::record_complete_scan(scan).then(prune))
            .await?;
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
        for s in entries_stmts(id, std::slice::from_ref(entry)) {
            query(&s).execute(&mut *tx).await?;
        }
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
        for s in entries_stmts(id, std::slice::from_ref(entry)) {
            query(&s).execute(&mut *tx).await?;
        }
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
        let fence = sql::admin_fence(order, expected_updated_at, now);
        let change = Change {
            keep_lease: false,
            ..change
        };
        let data = Arc::new((order.clone(), change, fence));
        self.write(Box::new(move |conn| {
            let data = Arc::clone(&data);
            Box::pin(async move {
                let (order, change, fence) = &*data;
                let done = query(fence).execute(&mut *conn).await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::Conflict(order.id.clone()));
                }
                match write_order(conn, None, order, change, now).await {
                    // The fence above matched, so the update cannot miss; if it does, the
                    // fence's write must be rolled back with the rest.
                    Err(StoreError::LeaseLost(id)) => Err(StoreError::Database(format!(
                        "order {id} vanished during an admin change"
                    ))),
                    other => other,
                }
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
        let data = Arc::new((deliveries.to_vec(), notices.to_vec()));
        self.write(Box::new(move |conn| {
            let data = Arc::clone(&data);
            Box::pin(async move { fan_out(conn, &data.0, &data.1, now).await })
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
        let data = Arc::new((deliveries.to_vec(), notices.to_vec(), worker.to_string()));
        self.write(Box::new(move |conn| {
            let data = Arc::clone(&data);
            Box::pin(async move {
                let (deliveries, notices, worker) = &*data;
                fan_out(conn, deliveries, notices, now).await?;
                claim_deliveries(conn, worker, now, claim_for, limit).await
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
        let worker: Arc<str> = worker.into();
        self.write(Box::new(move |conn| {
            let worker = Arc::clone(&worker);
            Box::pin(async move { claim_deliveries(conn, &worker, now, claim_for, limit).await })
        }))
        .await
    }

    async fn finish_delivery(
        &self,
        d: &Delivery,
        result: &DeliveryResult,
    ) -> Result<bool, StoreError> {
        self.execute(sql::finish_delivery(d, result))
            .await
            .map(|n| n == 1)
    }

    async fn finish_deliveries(
        &self,
        results: &[(Delivery, DeliveryResult)],
    ) -> Result<Vec<bool>, StoreError> {
        if results.is_empty() {
            return Ok(Vec::new());
        }
        let plan = Arc::new(FinishPlan::new(results));
        self.write(Box::new(move |conn| {
            let plan = Arc::clone(&plan);
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
        let mut turn = self.write_turn().await?;
        let mut tx = turn.begin().await?;
        for (id, e) in entries {
            query(&sql::append_timeline(id, e))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn replace_catalog(&self, packages: &[CatalogPackage]) -> Result<(), StoreError> {
        let all = Stmt::chain(
            std::iter::once(sql::delete_catalog()).chain(packages.iter().map(sql::insert_package)),
        );
        if let Some(all) = all {
            self.execute(all).await?;
        }
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
        let rotate = sql::rotate_access_token(id, next);
        let line = Stmt::chain(entries_stmts(id, std::slice::from_ref(entry)));
        let data = Arc::new((id.clone(), rotate, line));
        self.write(Box::new(move |conn| {
            let data = Arc::clone(&data);
            Box::pin(async move {
                let (id, rotate, line) = &*data;
                let done = query(rotate).execute(&mut *conn).await?;
                if done.rows_affected() == 0 {
                    return Err(sql::no_order_for_token(id));
                }
                if let Some(line) = line {
                    query(line).execute(&mut *conn).await?;
                }
                Ok(())
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

/// A purchase intent and the fenced order write that goes with it.
struct Intent {
    /// The lease that fences the order write.
    lease: Lease,
    /// The order update, fenced.
    update: Stmt,
    /// The timeline lines and then the intent row, `RETURNING id`: one call.
    rest: Stmt,
    /// For the error when the fence fails.
    order_id: OrderId,
}

impl Intent {
    fn new(
        lease: &Lease,
        order: &Order,
        intent: &PurchaseIntent,
        entries: &[TimelineEntry],
    ) -> Self {
        let change = Change {
            keep_lease: true,
            ..Change::default()
        };
        let rest = entries_stmts(&order.id, entries)
            .into_iter()
            .chain(sql::after_order_write(order, &change))
            .chain(std::iter::once(sql::insert_purchase(intent)));
        Self {
            lease: lease.clone(),
            update: sql::update_order(Some(lease), order, &change),
            rest: Stmt::chain(rest).unwrap_or_else(|| sql::insert_purchase(intent)),
            order_id: order.id.clone(),
        }
    }

    /// The fenced order write first (if the lease is gone, no intent is written), then the
    /// lines and the intent; the purchase id.
    async fn write(&self, conn: &mut SqliteConnection) -> Result<PurchaseId, StoreError> {
        let done = query(&self.update).execute(&mut *conn).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::LeaseLost(self.order_id.clone()));
        }
        let rows = query(&self.rest).fetch_all(&mut *conn).await?;
        let row = rows
            .last()
            .ok_or_else(|| StoreError::Database("the purchase intent returned no id".into()))?;
        row.int("id").map(PurchaseId)
    }
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

    fn order(i: usize) -> Order {
        let req = crate::domain::OrderRequest {
            order_ref: format!("gc-{i}"),
            package: 5,
            ram_gb: 2,
            customer: crate::domain::order::CustomerRequest {
                email: "a@example.com".into(),
                name: "A".into(),
            },
            os: None,
        };
        Order::accept(crate::domain::NewOrder::parse(&req).unwrap(), Timestamp(1))
    }

    /// Writes queued together share a transaction, and a failing one fails alone: a write that
    /// failed deciding (a lease that matched nothing) leaves the group going, one that failed
    /// otherwise rolls it back and the others run again; every other write is committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_never_fails_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("g.db").display());
        let store = SqliteStore::connect(&url).await.unwrap();
        let access = AccessToken {
            hash: "aa".into(),
            generation: Some(0),
        };
        let entry = TimelineEntry {
            at: Timestamp(2),
            kind: crate::domain::EntryKind::Admin,
            message: "x".into(),
        };
        let mut writes = Vec::new();
        for i in 0..60 {
            let (store, access, entry) = (store.clone(), access.clone(), entry.clone());
            writes.push(tokio::spawn(async move {
                match i % 10 {
                    // No such order: fails after nothing matched, a "dirty" failure.
                    3 => store
                        .rotate_access_token(&OrderId::new(), &access, &entry)
                        .await
                        .map(|()| false),
                    // A lease nobody holds: fails deciding, wrote nothing.
                    7 => store
                        .release(&Lease {
                            order_id: OrderId::new(),
                            worker: "w".into(),
                            token: 1,
                            expires_at: Timestamp(9),
                        })
                        .await
                        .map(|()| false),
                    _ => store
                        .insert_order(&order(i), &access, std::slice::from_ref(&entry), &[])
                        .await
                        .map(|intake| matches!(intake, Intake::Created(_))),
                }
            }));
        }
        let mut created = 0;
        for (i, w) in writes.into_iter().enumerate() {
            match (i % 10, w.await.unwrap()) {
                (3 | 7, Err(_)) => {}
                (3 | 7, Ok(_)) => panic!("write {i} should have failed"),
                (_, Ok(true)) => created += 1,
                (_, other) => panic!("write {i} failed for a batch-mate: {other:?}"),
            }
        }
        assert_eq!(created, 48);
        let counts = store.state_counts().await.unwrap();
        let total: u64 = counts.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 48, "every successful write is committed");
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
