//! Three `provisioner serve` processes on one PostgreSQL database, the SmartVPS simulator over
//! HTTP in this test process (so its own record of purchases can be read), 300 orders, and two
//! processes killed with SIGKILL: one while it has a purchase in flight, one while it holds an
//! order mid-status-call with other orders waiting on their timers.
//!
//! The kills are decided from the database, not from timing guesses:
//! - A: killed once the ledger has a purchase without an outcome (`purchases.outcome IS NULL`)
//!   whose order is leased by A's worker id (each process names its worker id in `/healthz`).
//! - B: killed once B holds a live lease on an order awaiting credentials (a status call in
//!   flight) while at least one other order sits in a persisted wait (`run_at` in the future,
//!   unleased).
//!
//! Then, checked from the ledger and from the simulator's record of purchases: every order ends
//! ready, or needs_attention with an escalated unknown outcome left by a killed worker; no order
//! has two servers; no order's purchases overlap in time or repeat an attempt (no order worked by
//! two processes at once); no package has two purchases in flight at once (single flight).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use provisioner::clock::{Clock, SystemClock};
use provisioner::crypto::Cipher;
use provisioner::domain::{OrderState, PackageId};
use provisioner::simulator::{
    self, BuyEffect, BuyStep, HttpConfig, PackageDefaults, PackageSpec, Simulator,
};
use provisioner::store::postgres::PostgresStore;
use secrecy::ExposeSecret;
use serde_json::json;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;

use crate::pg::PgServer;

const ORDERS: usize = 300;
const PACKAGES: u32 = 50;
const SIM_USER: &str = "mp-reseller";
const SIM_PASSWORD: &str = "mp-secret";
/// The takeover's marker for a purchase whose worker died mid-call (see `engine::buy`).
const STOPPED_MID_CALL: &str = "worker stopped mid-call";

/// Fast but realistic in shape: a purchase is in flight long enough to be killed in, the first
/// buy of every package is refused (its order then waits), credentials take a status retry.
/// Timeouts are several times the simulated latencies, so a loaded CI machine does not turn a
/// slow reply into an unknown outcome: every unknown outcome in this test comes from a kill.
/// The lease (11 s) is longer than 2 x buy.timeout and the action timeout, as config validation
/// requires.
fn config(sim_addr: std::net::SocketAddr) -> String {
    format!(
        r#"
[policy]
on_unknown = "reconcile"
[policy.buy]
attempts = 3
timeout = "5s"
delays = ["1s", "1s"]
horizon = "7s"
[policy.status]
attempts = 5
timeout = "3s"
delays = ["500ms", "500ms", "500ms", "500ms"]
[policy.action]
timeout = "5s"
horizon = "5s"
[smartvps]
base_url = "http://{sim_addr}/"
username = "{SIM_USER}"
password = "{SIM_PASSWORD}"
[worker]
concurrency = 32
lease = "11s"
poll_interval = "100ms"
shutdown_grace = "1s"
"#
    )
}

/// One `provisioner serve` child.
struct Server {
    name: &'static str,
    process: Child,
    api: String,
    worker: String,
    log: PathBuf,
}

/// Kills every child still running when the test ends, passes or panics.
struct Fleet(Vec<Server>);

impl Drop for Fleet {
    fn drop(&mut self) {
        for s in &mut self.0 {
            let _ = s.process.kill();
            let _ = s.process.wait();
        }
    }
}

impl Fleet {
    fn get(&mut self, name: &str) -> &mut Server {
        self.0.iter_mut().find(|s| s.name == name).unwrap()
    }

    /// The last lines of every child's log, for a failure message.
    fn logs(&self) -> String {
        self.0
            .iter()
            .map(|s| {
                let text = std::fs::read_to_string(&s.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {} ({}):\n{}", s.name, s.worker, tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn spawn_server(
    name: &'static str,
    dir: &Path,
    config_path: &Path,
    db_url: &str,
    key: &str,
    http: &reqwest::Client,
) -> Server {
    let port = free_port();
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let err = out.try_clone().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_provisioner"));
    cmd.args(["--config"])
        .arg(config_path)
        .args(["--log-format", "json", "serve"]);
    // Only what this test sets reaches the child: a developer's own PROVISIONER_* or SMARTVPS_*
    // variables must not redirect it.
    for var in provisioner::config::ENV_VARS {
        cmd.env_remove(var);
    }
    cmd.env_remove("RUST_LOG")
        .env("PROVISIONER_DATABASE_URL", db_url)
        .env("PROVISIONER_LISTEN", format!("127.0.0.1:{port}"))
        .env("PROVISIONER_SECRET_KEY", key)
        .env(
            "PROVISIONER_STOREFRONTS",
            format!(
                "{}:{}",
                crate::helpers::STOREFRONT,
                crate::helpers::STOREFRONT_SECRET
            ),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let mut process = cmd.spawn().expect("start provisioner serve");
    let api = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let worker = loop {
        if let Some(status) = process.try_wait().unwrap() {
            panic!(
                "{name} exited at start-up ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if let Ok(r) = http.get(format!("{api}/healthz")).send().await
            && r.status().is_success()
        {
            let health: serde_json::Value = r.json().await.unwrap();
            break health["worker"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not answer /healthz within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Server {
        name,
        process,
        api,
        worker,
        log,
    }
}

/// Polls `probe` until it returns `Some`, failing with the fleet's logs after `limit`.
async fn poll_until<T, F, Fut>(fleet: &Fleet, what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}\n{}",
            fleet.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn now_ms() -> i64 {
    SystemClock.now().millis()
}

/// Orders leased by `worker` right now.
/// The states the engine still works, from the domain's [`OrderState::is_active`] (bound as
/// `state = ANY($n)`), so the test cannot fall behind a new state.
fn active_states() -> Vec<&'static str> {
    OrderState::ALL
        .into_iter()
        .filter(|s| s.is_active())
        .map(OrderState::as_str)
        .collect()
}

async fn leased_by(pool: &PgPool, worker: &str) -> HashSet<String> {
    sqlx::query_scalar::<_, String>(
        "SELECT id FROM orders WHERE lease_owner = $1 AND lease_expires_at > $2",
    )
    .bind(worker)
    .bind(now_ms())
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// SIGKILL, then reap: from here on the process writes nothing.
fn kill(server: &mut Server) {
    server.process.kill().unwrap();
    server.process.wait().unwrap();
}

#[derive(Debug)]
struct LedgerRow {
    id: i64,
    order_id: String,
    attempt: i64,
    package_id: i64,
    sent_at: i64,
    outcome: Option<String>,
    reason: Option<String>,
    decided_at: Option<i64>,
    resolution: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_on_postgres_survive_sigkill_mid_purchase_and_mid_wait() {
    let Some(pg) =
        PgServer::get("three_processes_on_postgres_survive_sigkill_mid_purchase_and_mid_wait")
            .await
    else {
        return;
    };
    crate::helpers::init_logs();
    let started = Instant::now();
    let db_url = pg.fresh_database().await;
    // Migrate once up front; this pool also reads the ledger for kill decisions and checks.
    let store = PostgresStore::connect_with(&db_url, 4).await.unwrap();
    let pool = store.pool().clone();

    // SmartVPS, on real time like the children.
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let sim = Simulator::new(clock, 6);
    let packages: Vec<PackageId> = (0..PACKAGES).map(|i| PackageId(200 + i)).collect();
    for (i, pkg) in packages.iter().enumerate() {
        sim.add_package(PackageSpec::new(pkg.0, &format!("100.64.{i}"), 50).unwrap());
        sim.set_defaults(
            *pkg,
            PackageDefaults {
                buy_latency: Duration::from_millis(800),
                status_latency: Duration::from_millis(300),
                build_time: Duration::from_millis(700),
                os: "ubuntu".into(),
                ..PackageDefaults::default()
            },
        )
        .unwrap();
        // The first purchase of every package is refused: its order waits 1 s and retries.
        sim.script_buy(
            *pkg,
            [BuyStep::new(
                Duration::from_millis(150),
                BuyEffect::ErrorReply,
            )],
        )
        .unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_addr = listener.local_addr().unwrap();
    let sim_stop = CancellationToken::new();
    tokio::spawn(simulator::serve(
        sim.clone(),
        listener,
        HttpConfig::new(SIM_USER, SIM_PASSWORD),
        sim_stop.clone(),
    ));

    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("provisioner.toml");
    std::fs::File::create(&config_path)
        .unwrap()
        .write_all(config(sim_addr).as_bytes())
        .unwrap();
    let key = Cipher::generate_key();
    // reqwest is built without a default TLS provider; the service installs ring on start-up.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    // One at a time, so each worker id is known to belong to its process.
    let mut fleet = Fleet(Vec::new());
    for name in ["a", "b", "c"] {
        let s = spawn_server(
            name,
            dir.path(),
            &config_path,
            &db_url,
            key.expose_secret(),
            &http,
        )
        .await;
        fleet.0.push(s);
    }
    let apis: Vec<String> = fleet.0.iter().map(|s| s.api.clone()).collect();

    // 300 paid orders, spread over the three APIs.
    let mut ids = Vec::with_capacity(ORDERS);
    for chunk in (0..ORDERS).collect::<Vec<_>>().chunks(25) {
        let posts = chunk.iter().map(|&i| {
            let body = json!({
                "order_ref": format!("mp-{i}"),
                "package": packages[i % packages.len()].0,
                "ram_gb": 2,
                "customer": { "email": format!("c{i}@example.com"), "name": "Customer" },
            });
            crate::helpers::signed_post(
                &http,
                &format!("{}/api/v1/orders", apis[i % apis.len()]),
                &serde_json::to_vec(&body).unwrap(),
            )
            .send()
        });
        for r in futures_util::future::join_all(posts).await {
            let r = r.unwrap();
            assert_eq!(r.status(), 201);
            let v: serde_json::Value = r.json().await.unwrap();
            ids.push(v["id"].as_str().unwrap().to_string());
        }
    }

    // Kill A with a purchase in flight.
    let a_worker = fleet.get("a").worker.clone();
    let a_probe = a_worker.clone();
    let (pool_ref, fleet_ref) = (&pool, &fleet);
    let in_flight: i64 = poll_until(
        fleet_ref,
        "a purchase in flight on process a",
        Duration::from_secs(30),
        || {
            let w = a_probe.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT COUNT(*) FROM purchases p JOIN orders o ON o.id = p.order_id \
                     WHERE p.outcome IS NULL AND o.lease_owner = $1",
                )
                .bind(w)
                .fetch_one(pool_ref)
                .await
                .ok()
                .filter(|n| *n > 0)
            }
        },
    )
    .await;
    kill(fleet.get("a"));
    let a_leased = leased_by(&pool, &a_worker).await;
    let a_in_flight: Vec<i64> = sqlx::query_scalar(
        "SELECT p.id FROM purchases p JOIN orders o ON o.id = p.order_id WHERE p.outcome IS NULL AND o.lease_owner = $1",
    )
    .bind(&a_worker)
    .fetch_all(&pool)
    .await
    .unwrap();
    eprintln!(
        "killed a ({a_worker}) at {:?}: {in_flight} purchase(s) seen in flight, {} after the kill, {} order(s) leased",
        started.elapsed(),
        a_in_flight.len(),
        a_leased.len()
    );
    assert!(!a_in_flight.is_empty(), "a died with a purchase in flight");

    // Kill B mid-status-call while other orders wait on persisted timers.
    let b_worker = fleet.get("b").worker.clone();
    let b_probe = b_worker.clone();
    let waiting_at_kill: i64 = poll_until(
        &fleet,
        "process b mid-status-call with orders waiting",
        Duration::from_secs(30),
        || {
            let w = b_probe.clone();
            async move {
                let now = now_ms();
                let row = sqlx::query(
                    "SELECT \
                       COUNT(*) FILTER (WHERE lease_owner = $1 AND lease_expires_at > $2 AND state = 'awaiting_credentials') AS b_status, \
                       COUNT(*) FILTER (WHERE state = ANY($3) AND run_at > $2 \
                                        AND (lease_expires_at IS NULL OR lease_expires_at <= $2)) AS waiting \
                     FROM orders",
                )
                .bind(w)
                .bind(now)
                .bind(active_states())
                .fetch_one(pool_ref)
                .await
                .ok()?;
                let b_status: i64 = row.get("b_status");
                let waiting: i64 = row.get("waiting");
                (b_status > 0 && waiting > 0).then_some(waiting)
            }
        },
    )
    .await;
    kill(fleet.get("b"));
    let b_leased = leased_by(&pool, &b_worker).await;
    eprintln!(
        "killed b ({b_worker}) at {:?}: {} order(s) leased, {waiting_at_kill} order(s) waiting on timers",
        started.elapsed(),
        b_leased.len()
    );
    assert!(!b_leased.is_empty(), "b died holding leases");

    // C alone finishes everything: the dead processes' orders after their leases lapse.
    let total = i64::try_from(ORDERS).unwrap();
    poll_until(
        &fleet,
        "every order terminal",
        Duration::from_secs(100),
        || async {
            let active: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE state = ANY($1)")
                    .bind(active_states())
                    .fetch_one(pool_ref)
                    .await
                    .ok()?;
            (active == 0).then_some(())
        },
    )
    .await;
    eprintln!("all {total} orders terminal at {:?}", started.elapsed());
    let c_alive = fleet.get("c").process.try_wait().unwrap().is_none();
    assert!(c_alive, "c kept running");

    // ---- What the database says.
    let orders: HashMap<String, (String, Option<String>)> =
        sqlx::query("SELECT id, state, server_ip FROM orders")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get("id"), (r.get("state"), r.get("server_ip"))))
            .collect();
    assert_eq!(orders.len(), ORDERS);
    assert!(ids.iter().all(|id| orders.contains_key(id)));
    let ledger: Vec<LedgerRow> = sqlx::query(
        "SELECT id, order_id, attempt, package_id, sent_at, outcome, outcome_reason, decided_at, resolution \
         FROM purchases ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| LedgerRow {
        id: r.get("id"),
        order_id: r.get("order_id"),
        attempt: r.get("attempt"),
        package_id: r.get("package_id"),
        sent_at: r.get("sent_at"),
        outcome: r.get("outcome"),
        reason: r.get("outcome_reason"),
        decided_at: r.get("decided_at"),
        resolution: r.get("resolution"),
    })
    .collect();
    let killed_leases: HashSet<&String> = a_leased.iter().chain(b_leased.iter()).collect();

    // Every purchase has an outcome; the ones left without one by a kill were marked unknown by
    // the takeover, and only orders the killed processes held can carry that mark.
    for p in &ledger {
        assert!(p.outcome.is_some() && p.decided_at.is_some(), "{p:?}");
    }
    let marked: Vec<&LedgerRow> = ledger
        .iter()
        .filter(|p| {
            p.reason
                .as_deref()
                .is_some_and(|r| r.contains(STOPPED_MID_CALL))
        })
        .collect();
    for p in &marked {
        assert_eq!(p.outcome.as_deref(), Some("unknown"), "{p:?}");
        assert!(
            killed_leases.contains(&p.order_id),
            "only a killed process's order is taken over mid-call: {p:?}"
        );
        assert!(
            p.resolution.is_some(),
            "the unknown outcome was settled: {p:?}"
        );
    }
    for id in &a_in_flight {
        assert!(
            marked.iter().any(|p| p.id == *id),
            "purchase {id}, in flight when a died, was taken over and marked unknown"
        );
    }

    // Every order ended ready, or needs_attention because a killed worker's purchase had an
    // unknown outcome that reconciliation could not clear (stock fell: it may have bought).
    let mut ready = 0;
    let mut escalated = Vec::new();
    for (id, (state, _)) in &orders {
        match state.as_str() {
            "ready" => ready += 1,
            "needs_attention" => {
                let why = marked.iter().find(|p| &p.order_id == id);
                assert!(
                    why.is_some_and(|p| p.resolution.as_deref() == Some("escalated")),
                    "order {id} needs attention without an escalated mid-call purchase: {:?}",
                    ledger
                        .iter()
                        .filter(|p| &p.order_id == id)
                        .collect::<Vec<_>>()
                );
                escalated.push(id.clone());
            }
            other => panic!("order {id} ended {other}\n{}", fleet.logs()),
        }
    }
    eprintln!(
        "{ready} ready, {} needs_attention (escalated unknown outcomes of killed workers), {} purchase(s) taken over mid-call",
        escalated.len(),
        marked.len()
    );

    // No order worked by two processes at once, from the ledger: per order, attempts are
    // distinct and purchases never overlap in [sent_at, decided_at].
    let mut by_order: BTreeMap<&str, Vec<&LedgerRow>> = BTreeMap::new();
    let mut by_package: BTreeMap<i64, Vec<&LedgerRow>> = BTreeMap::new();
    for p in &ledger {
        by_order.entry(&p.order_id).or_default().push(p);
        by_package.entry(p.package_id).or_default().push(p);
    }
    for (order, rows) in &mut by_order {
        rows.sort_by_key(|p| p.sent_at);
        let attempts: HashSet<i64> = rows.iter().map(|p| p.attempt).collect();
        assert_eq!(
            attempts.len(),
            rows.len(),
            "order {order} repeated an attempt: {rows:?}"
        );
        for w in rows.windows(2) {
            assert!(
                w[1].sent_at >= w[0].decided_at.unwrap(),
                "order {order} had two purchases in flight at once: {w:?}"
            );
        }
    }
    // Single flight, from the ledger: one purchase in flight per package at a time.
    for (pkg, rows) in &mut by_package {
        rows.sort_by_key(|p| p.sent_at);
        for w in rows.windows(2) {
            assert!(
                w[1].sent_at >= w[0].decided_at.unwrap(),
                "package {pkg} had two purchases in flight at once: {w:?}"
            );
        }
    }

    // ---- What SmartVPS (the simulator) says.
    let bought = sim.purchases();
    let mut servers_per_order: HashMap<String, Vec<&simulator::PurchaseRecord>> = HashMap::new();
    let mut per_package: BTreeMap<u32, Vec<&simulator::PurchaseRecord>> = BTreeMap::new();
    for rec in &bought {
        let rid = rec
            .request_id
            .as_deref()
            .expect("every purchase carries its request id");
        let (order, attempt) = rid
            .split_once('/')
            .expect("request id is <order id>/<attempt>");
        assert!(
            orders.contains_key(order),
            "a purchase for an unknown order: {rid}"
        );
        assert!(attempt.parse::<u32>().is_ok(), "{rid}");
        servers_per_order
            .entry(order.to_string())
            .or_default()
            .push(rec);
        per_package.entry(rec.package.0).or_default().push(rec);
    }
    for (order, recs) in &servers_per_order {
        assert_eq!(
            recs.len(),
            1,
            "order {order} was sold {} servers: {recs:?}",
            recs.len()
        );
    }
    for (id, (state, ip)) in &orders {
        if state == "ready" {
            let recs = servers_per_order
                .get(id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            assert_eq!(recs.len(), 1, "ready order {id} has exactly one server");
            assert_eq!(
                ip.as_deref(),
                Some(recs[0].ip.to_string().as_str()),
                "order {id} delivered the server SmartVPS sold it"
            );
        }
    }
    for (pkg, recs) in &mut per_package {
        recs.sort_by_key(|r| r.requested_at);
        for w in recs.windows(2) {
            assert!(
                w[1].requested_at >= w[0].completed_at,
                "SmartVPS saw two purchases of package {pkg} in flight at once: {w:?}"
            );
        }
    }
    assert!(
        bought.len() >= ready,
        "{} servers sold for {ready} ready orders",
        bought.len()
    );
    assert!(
        bought.len() <= ready + escalated.len(),
        "every server sold is delivered or held for an admin"
    );
    eprintln!(
        "{} server(s) sold for {ORDERS} orders; test took {:?}",
        bought.len(),
        started.elapsed()
    );
    sim_stop.cancel();
}

/// Issue 16: with three `serve` processes on one PostgreSQL database and the default 1 s poll,
/// an order taken in by another process (here, this test's own store) is claimed within
/// milliseconds: the intake's NOTIFY, delivered at its commit, wakes the idle workers of every
/// process. Measured as due (the order's `created_at`) to claimed (its "Provisioning started"
/// line, written by the worker right after its claim). Printed with `--nocapture`; the bound
/// asserted is loose (well under the poll interval) because CI machines are loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_pick_up_new_orders_without_waiting_for_a_poll() {
    let Some(pg) =
        PgServer::get("three_processes_pick_up_new_orders_without_waiting_for_a_poll").await
    else {
        return;
    };
    crate::helpers::init_logs();
    let db_url = pg.fresh_database().await;
    let store = PostgresStore::connect_with(&db_url, 2).await.unwrap();
    let pool = store.pool().clone();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let sim = Simulator::new(Arc::clone(&clock), 7);
    for i in 0..PACKAGES {
        sim.add_package(PackageSpec::new(200 + i, &format!("100.64.{i}"), 50).unwrap());
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_addr = listener.local_addr().unwrap();
    let sim_stop = CancellationToken::new();
    tokio::spawn(simulator::serve(
        sim.clone(),
        listener,
        HttpConfig::new(SIM_USER, SIM_PASSWORD),
        sim_stop.clone(),
    ));
    let _stop_simulator = sim_stop.drop_guard();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("provisioner.toml");
    let text = config(sim_addr).replace("poll_interval = \"100ms\"", "poll_interval = \"1s\"");
    std::fs::write(&config_path, text).unwrap();
    let key = Cipher::generate_key();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let mut fleet = Fleet(Vec::new());
    for name in ["a", "b", "c"] {
        let s = spawn_server(
            name,
            dir.path(),
            &config_path,
            &db_url,
            key.expose_secret(),
            &http,
        )
        .await;
        fleet.0.push(s);
    }
    // Let every process reach its idle wait (a poll of up to 1 s) before the first order.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let orders = 60;
    let mut ids = Vec::new();
    for i in 0..orders {
        let order = provisioner::domain::Order::accept(
            provisioner::domain::NewOrder::parse(&crate::helpers::request(
                &format!("pickup-{i}"),
                200 + (i as u32 % PACKAGES),
            ))
            .unwrap(),
            clock.now(),
        );
        let access = provisioner::store::AccessToken {
            hash: format!("h{i}"),
            generation: Some(0),
        };
        use provisioner::store::Store;
        store.insert_order(&order, &access, &[], &[]).await.unwrap();
        ids.push(order.id.to_string());
        // Spread out, so most orders find every worker idle in its poll wait.
        tokio::time::sleep(Duration::from_millis(37)).await;
    }
    let delays: Vec<i64> = poll_until(&fleet, "every order picked up", Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            let rows: Vec<(i64,)> = sqlx::query_as(
                "SELECT MIN(t.at) - o.created_at FROM orders o JOIN timeline t ON t.order_id = o.id \
                 WHERE o.order_ref LIKE 'pickup-%' AND t.message LIKE '%Provisioning started%' GROUP BY o.id, o.created_at",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            (rows.len() == orders).then(|| rows.into_iter().map(|r| r.0).collect())
        }
    })
    .await;
    let mut sorted = delays.clone();
    sorted.sort_unstable();
    let pick = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    println!(
        "pickup delay over {orders} orders, 3 serve processes, 1 s poll: p50 {} ms, p99 {} ms, max {} ms",
        pick(0.5),
        pick(0.99),
        sorted[sorted.len() - 1]
    );
    assert!(
        pick(0.99) < 500,
        "p99 pickup {} ms: the NOTIFY did not wake the workers\n{}",
        pick(0.99),
        fleet.logs()
    );
}
