//! The fresh databases of one run, and their raw commit rate: the physical bound.

use super::*;

/// The fresh databases (or files) of one run.
pub(super) struct BenchDb {
    pub(super) kind: StoreKind,
    /// SQLite files live here; removed with it.
    pub(super) dir: tempfile::TempDir,
    /// PostgreSQL: the URL fresh databases are created from.
    pub(super) admin_url: String,
    /// PostgreSQL databases to drop at the end.
    pub(super) created: Vec<String>,
}

impl BenchDb {
    pub(super) async fn create(opts: &Options) -> anyhow::Result<Self> {
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
    pub(super) async fn fresh(&mut self, purpose: &str) -> anyhow::Result<String> {
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
                    .with_context(|| {
                        format!(
                            "connecting to {}",
                            crate::redact::url(&self.admin_url, crate::redact::User::Shown)
                        )
                    })?;
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

    /// The pipeline's store on a fresh database, that database's raw commit rate, and its URL.
    pub(super) async fn open_pipeline_store(
        &mut self,
        opts: &Options,
    ) -> anyhow::Result<(Arc<dyn Store>, f64, String)> {
        let url = self.fresh("pipeline").await?;
        let workers = opts.workers;
        Ok(match self.kind {
            StoreKind::Sqlite => {
                let store = SqliteStore::connect_with(&url, opts.group_commit).await?;
                let raw = raw_commit_rate_sqlite(&store, workers).await?;
                (Arc::new(store), raw, url)
            }
            StoreKind::Postgres => {
                let store = PostgresStore::connect(&url).await?;
                let raw = raw_commit_rate_postgres(store.pool(), workers).await?;
                (Arc::new(store), raw, url)
            }
        })
    }

    pub(super) async fn drop_all(&mut self) {
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
pub(super) async fn raw_loop<F, Fut>(tasks: usize, insert: F) -> anyhow::Result<f64>
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

pub(super) async fn raw_commit_rate_postgres(
    pool: &sqlx::PgPool,
    tasks: usize,
) -> anyhow::Result<f64> {
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
pub(super) async fn raw_commit_rate_sqlite(
    store: &SqliteStore,
    tasks: usize,
) -> anyhow::Result<f64> {
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
