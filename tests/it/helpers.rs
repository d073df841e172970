//! Test harnesses: a virtual-time engine on the in-memory store with the simulator in-process,
//! and a real service (SQLite file, HTTP API, real client, simulator over HTTP) on a fast clock.

use std::sync::Arc;
use std::time::Duration;

use provisioner::app::{Running, StartOptions, start};
use provisioner::clock::{Clock, ScaledClock, SystemClock, Timestamp};
use provisioner::config::{AdminToken, Settings, Storefront};
use provisioner::crypto::Cipher;
use provisioner::domain::order::CustomerRequest;
use provisioner::domain::{NewOrder, Order, OrderId, OrderRequest, PackageId, TimelineEntry};
use provisioner::engine::{Engine, WorkerSettings};
use provisioner::policy::RetryPolicy;
use provisioner::simulator::{PackageSpec, Simulator};
use provisioner::store::memory::MemoryStore;
use provisioner::store::{Intake, Store};

/// Logs only when TEST_LOG is set.
pub fn init_logs() {
    provisioner::provider::smartvps::install_crypto_provider();
    if std::env::var_os("TEST_LOG").is_some() {
        provisioner::telemetry::init(provisioner::telemetry::LogFormat::Human, "info");
    }
}

pub fn request(order_ref: &str, package: u32) -> OrderRequest {
    OrderRequest {
        order_ref: order_ref.into(),
        package: i64::from(package),
        ram_gb: 4,
        customer: CustomerRequest {
            email: "ann@example.com".into(),
            name: "Ann".into(),
        },
        os: Some("ubuntu".into()),
    }
}

/// A virtual-time world: paused tokio time, memory store, simulator in-process.
pub struct VirtualWorld {
    pub clock: Arc<ScaledClock>,
    pub sim: Simulator,
    pub store: Arc<MemoryStore>,
    pub engine: Engine,
    pub start: Timestamp,
}

impl VirtualWorld {
    /// Must be called inside `#[tokio::test(start_paused = true)]`.
    pub fn new(policy: RetryPolicy, packages: &[(u32, &str, u32)]) -> Self {
        init_logs();
        let clock = Arc::new(ScaledClock::virtual_at_epoch());
        let dyn_clock: Arc<dyn Clock> = clock.clone();
        let sim = Simulator::new(Arc::clone(&dyn_clock), 42);
        for (id, name, free) in packages {
            sim.add_package(PackageSpec::new(*id, name, *free).unwrap());
        }
        let store = Arc::new(MemoryStore::new());
        let engine = Self::engine_on(&store, &sim, &dyn_clock, policy);
        let start = clock.now();
        Self {
            clock,
            sim,
            store,
            engine,
            start,
        }
    }

    pub fn engine_on(
        store: &Arc<MemoryStore>,
        sim: &Simulator,
        clock: &Arc<dyn Clock>,
        policy: RetryPolicy,
    ) -> Engine {
        let cipher = Arc::new(Cipher::from_hex(&Cipher::generate_key()).unwrap());
        let settings = WorkerSettings::for_policy(&policy);
        Engine::new(
            store.clone(),
            Arc::new(sim.provider()),
            Arc::clone(clock),
            policy,
            cipher,
            settings,
        )
    }

    pub async fn accept(&self, order_ref: &str, package: u32) -> Order {
        match self
            .engine
            .accept(NewOrder::parse(&request(order_ref, package)).unwrap())
            .await
            .unwrap()
        {
            Intake::Created(o) => o,
            other => panic!("expected a new order, got {other:?}"),
        }
    }

    /// Works every due order, then lets virtual time jump to the next due one; until nothing is
    /// due. Returns the number of steps worked.
    pub async fn drive(&self) -> usize {
        let mut steps = 0;
        for _ in 0..10_000 {
            steps += self.engine.run_due_once().await.unwrap();
            match self.store.next_due().await.unwrap() {
                None => return steps,
                Some(at) => {
                    let now = self.clock.now();
                    if at > now {
                        // Or sooner, when a late reply makes an order due.
                        tokio::select! {
                            () = self.clock.sleep(at.since(now)) => {}
                            () = self.engine.woken() => {}
                        }
                    }
                }
            }
        }
        panic!("the engine did not settle within 10,000 rounds");
    }

    /// Buys a server in `package` as the reseller would in the SmartVPS panel: on the same
    /// account, attributed to no order.
    pub async fn buy_outside(&self, package: &str, ram_gb: i64) -> std::net::Ipv4Addr {
        buy_outside(&self.sim, package, ram_gb).await
    }

    /// The engine's lease length (a crashed worker's order is taken over after it).
    pub fn engine_lease(&self) -> Duration {
        WorkerSettings::for_policy(self.engine.policy()).lease
    }

    /// Seconds since the world started.
    pub fn offset(&self, t: Timestamp) -> u64 {
        t.since(self.start).as_secs()
    }

    pub async fn order(&self, id: &OrderId) -> Order {
        self.store.order(id).await.unwrap().unwrap()
    }

    pub async fn timeline(&self, id: &OrderId) -> Vec<TimelineEntry> {
        self.store.timeline(id).await.unwrap()
    }

    /// Offsets (s) of timeline lines containing `needle`.
    pub async fn times_of(&self, id: &OrderId, needle: &str) -> Vec<u64> {
        self.timeline(id)
            .await
            .iter()
            .filter(|e| e.message.contains(needle))
            .map(|e| self.offset(e.at))
            .collect()
    }

    /// Servers SmartVPS (the simulator) sold for this order.
    pub fn servers_for(&self, id: &OrderId) -> usize {
        self.sim.purchases_for(&format!("{id}/")).len()
    }
}

/// The admin token the real service accepts, named `alice`.
pub const ADMIN_TOKEN: &str = "alice-admin-token-for-tests-0001";
/// The storefront the real service accepts orders from, and its signing secret.
pub const STOREFRONT: &str = "shop";
pub const STOREFRONT_SECRET: &str = "shop-signing-secret-for-tests-7f3a9c";

/// A real service on a SQLite file, time running `speed` times as fast.
pub struct RealService {
    pub running: Running,
    pub api: String,
    pub http: reqwest::Client,
}

pub fn fast_clock(speed: f64) -> Arc<dyn Clock> {
    Arc::new(ScaledClock::new(SystemClock.now(), speed))
}

pub async fn start_service(
    db: &std::path::Path,
    sim: &Simulator,
    clock: Arc<dyn Clock>,
    key: &secrecy::SecretString,
) -> RealService {
    start_service_with(db, sim, clock, key, |_| {}).await
}

/// [`start_service`] with the settings adjusted by `tweak` before start.
pub async fn start_service_with(
    db: &std::path::Path,
    sim: &Simulator,
    clock: Arc<dyn Clock>,
    key: &secrecy::SecretString,
    tweak: impl FnOnce(&mut Settings),
) -> RealService {
    init_logs();
    let mut settings = Settings::from_sources(None, &|_| None).unwrap();
    settings.database.url = format!("sqlite://{}", db.display());
    settings.server.listen = "127.0.0.1:0".parse().unwrap();
    settings.secret_key = Some(key.clone());
    settings.worker.engine.poll_interval = Duration::from_millis(20);
    settings.worker.shutdown_grace = Duration::from_secs(5);
    settings.admin.tokens = vec![AdminToken {
        name: "alice".into(),
        token: secrecy::SecretString::from(ADMIN_TOKEN),
    }];
    settings.storefronts = vec![Storefront {
        name: STOREFRONT.into(),
        secret: secrecy::SecretString::from(STOREFRONT_SECRET),
    }];
    // The tests that exercise throttling set their own budget; the rest make many refused
    // requests on purpose from one address.
    settings.server.auth_failure_burst = 10_000;
    // Long enough that no keep-alive connection a test's client holds (a browser's, say) is
    // closed under it mid-test; the tests of these timeouts set their own.
    settings.server.header_timeout = Duration::from_secs(120);
    settings.server.idle_timeout = Duration::from_secs(120);
    tweak(&mut settings);
    let running = start(
        &settings,
        clock,
        StartOptions {
            simulator: Some(sim.clone()),
            ..StartOptions::default()
        },
    )
    .await
    .unwrap();
    let api = format!("http://{}", running.addr);
    RealService {
        running,
        api,
        http: reqwest::Client::new(),
    }
}

/// A POST of the raw `body` to `url` as the test storefront sends it: JSON, signed.
pub fn signed_post(http: &reqwest::Client, url: &str, body: &[u8]) -> reqwest::RequestBuilder {
    http.post(url)
        .header("content-type", "application/json")
        .header(
            "provisioner-signature",
            provisioner::web::storefront::sign_now(STOREFRONT_SECRET, body),
        )
        .body(body.to_vec())
}

/// Posts an intake request to the API at `api` (`http://host:port`), signed as the test
/// storefront; returns the status and the JSON body.
pub async fn post_order(
    http: &reqwest::Client,
    api: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    let r = signed_post(http, &format!("{api}/api/v1/orders"), &bytes)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The order `id` from the API at `api`, as `token` (an admin's or the order's own) sees it.
pub async fn get_order(
    http: &reqwest::Client,
    api: &str,
    id: &str,
    token: &str,
) -> serde_json::Value {
    http.get(format!("{api}/api/v1/orders/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

impl RealService {
    /// The order as an admin sees it (with timeline and ledger).
    pub async fn get(&self, id: &str) -> serde_json::Value {
        get_order(&self.http, &self.api, id, ADMIN_TOKEN).await
    }

    /// Polls the order until `done` holds (bounded: fails after `limit` of real time).
    pub async fn until(
        &self,
        id: &str,
        limit: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let v = self.get(id).await;
            if done(&v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {id} never reached the expected condition; last seen: {v:#}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl RealService {
    /// Posts an intake request; returns the status and the body.
    pub async fn intake(&self, body: &serde_json::Value) -> (u16, serde_json::Value) {
        post_order(&self.http, &self.api, body).await
    }

    /// An admin GET of `path` (under the API's root); returns the status and the body text.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.api))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// An admin POST of `body` to `path`; returns the status and the JSON body.
    pub async fn admin_post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.api))
            .bearer_auth(ADMIN_TOKEN)
            .json(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
}

/// Buys a server in `package` on the simulated account outside provisioner (no order's request
/// id), as a reseller buying in the SmartVPS panel.
pub async fn buy_outside(sim: &Simulator, package: &str, ram_gb: i64) -> std::net::Ipv4Addr {
    use provisioner::provider::{CallContext, Outcome, Provider};
    let name = provisioner::domain::PackageName::parse(package).unwrap();
    let ram = provisioner::domain::RamGb::parse(ram_gb).unwrap();
    match sim
        .provider()
        .buy(
            &CallContext::default(),
            &name,
            ram,
            Duration::from_secs(3600),
        )
        .await
    {
        Outcome::Succeeded(ip) => ip,
        other => panic!("the panel purchase failed: {other:?}"),
    }
}

pub fn scenario_package(sim: &Simulator, id: u32, name: &str) -> PackageId {
    sim.add_package(PackageSpec::new(id, name, 50).unwrap());
    PackageId(id)
}
