//! A PostgreSQL server for tests: fresh databases named `provisioner_test_<random>`, created
//! through the `postgres` maintenance database and dropped when the handle goes (also when the
//! test panics).
//!
//! Availability: outside CI a test that finds no PostgreSQL prints a loud SKIPPED banner and
//! returns; with `CI=true` it panics, because CI (`.ci/run`) makes sure PostgreSQL is running.
//! `PROVISIONER_TEST_PG_URL` points at another server (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, trust auth).

use std::sync::Mutex;
use std::time::Duration;

use sqlx::{Connection, PgConnection};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A reachable server and the databases this test created on it.
pub struct PgServer {
    /// URL of the maintenance database the test databases are created from.
    admin_url: String,
    /// Databases to drop when the handle goes.
    created: Mutex<Vec<String>>,
    /// One database shared by [`PgServer::fresh_schema`]'s schemas: dropping a database forces a
    /// checkpoint (about 2 s each on a busy server), dropping it with its schemas costs one.
    shared: tokio::sync::OnceCell<String>,
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

impl PgServer {
    /// The server, or `None` after a loud skip message when none answers (outside CI only).
    ///
    /// # Panics
    /// With `CI=true` when no PostgreSQL answers.
    pub async fn get(test: &str) -> Option<PgServer> {
        let admin_url =
            std::env::var("PROVISIONER_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.into());
        let shown = provisioner::redact::url(&admin_url, provisioner::redact::User::Shown);
        let attempt =
            tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&admin_url)).await;
        match attempt {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                Some(PgServer {
                    admin_url,
                    created: Mutex::new(Vec::new()),
                    shared: tokio::sync::OnceCell::new(),
                })
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "connection timed out after 5s".to_string(),
                };
                assert!(
                    !in_ci(),
                    "CI=true and no PostgreSQL answers at {shown} ({why}): {test} is required in CI; .ci/run starts PostgreSQL"
                );
                eprintln!(
                    "\n\
                     ************************************************************************\n\
                     *** SKIPPED {test}: no PostgreSQL at {shown}\n\
                     *** ({why})\n\
                     *** Start PostgreSQL or set PROVISIONER_TEST_PG_URL; CI=true fails here.\n\
                     ************************************************************************\n"
                );
                None
            }
        }
    }

    /// Creates a fresh, empty database and returns its URL.
    pub async fn fresh_database(&self) -> String {
        let name = format!("provisioner_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(&self.admin_url)
            .await
            .expect("connect to the maintenance database");
        // The name is ours (hex digits), so formatting it into the statement is safe.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create a test database");
        let _ = conn.close().await;
        self.created
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(name.clone());
        provisioner::store::postgres::with_database(&self.admin_url, &name)
    }
}

impl PgServer {
    /// A fresh, empty schema in a database shared by this handle, as a URL whose connections
    /// use it (`search_path`): as good as a fresh database for one store, and much cheaper.
    pub async fn fresh_schema(&self) -> String {
        let db = self
            .shared
            .get_or_init(|| self.fresh_database())
            .await
            .clone();
        let schema = format!("s_{}", uuid::Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(&db)
            .await
            .expect("connect to the test database");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut conn)
            .await
            .expect("create a test schema");
        let _ = conn.close().await;
        let sep = if db.contains('?') { '&' } else { '?' };
        format!("{db}{sep}options[search_path]={schema}")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let names = std::mem::take(
            &mut *self
                .created
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if names.is_empty() {
            return;
        }
        let admin_url = self.admin_url.clone();
        // Drop runs inside the test's runtime (or while it unwinds): a thread with its own
        // runtime does the async clean-up without blocking that runtime's workers.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(mut conn) = PgConnection::connect(&admin_url).await else {
                    return;
                };
                for name in names {
                    // FORCE ends connections a killed child process may have left behind.
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
                let _ = conn.close().await;
            });
        });
        let _ = cleanup.join();
    }
}
